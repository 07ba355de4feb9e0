"""The APEX HTTP adapter: wire format in, use cases called, APEX replies out."""

from keygate.api.app import create_app

__all__ = ["create_app"]
