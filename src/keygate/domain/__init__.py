"""The pure core of keygate: rules about signatures, permissions, IP addresses, keys and sessions.

Nothing in this package performs I/O or knows about a framework; every function here can be
tested with plain values.
"""
