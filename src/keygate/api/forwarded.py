"""Reading what proxies say about a request: ``X-Forwarded-For``/``X-Forwarded-Proto`` and RFC 7239 ``Forwarded``.

Pure parsing, no policy: each header becomes a list of hops, outermost first, one per proxy that
wrote one. A hop holds the address of whoever connected to that proxy (None when the proxy did not
disclose it, wrote ``unknown`` or an obfuscated identifier, or wrote something that is not an address)
and, for ``Forwarded``, the scheme of that connection. Which hops to believe is decided by
``keygate.api.wire.ClientAddress``.

Every line of a repeated header counts, in order: HAProxy's ``option forwardfor`` adds a line of its
own after the one the client sent, and a proxy that writes ``Forwarded`` may do the same.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from keygate.domain.iprules import canonical_address

SCHEMES = ("http", "https")
MAX_NODE = 60  # "[" + the longest IPv6 text (45, with an embedded IPv4) + "]:65535"
MAX_HOPS = 64  # more hops than any real chain of proxies; a longer list is read from its right end only


@dataclass(frozen=True, slots=True)
class Hop:
    address: str | None  # canonical IP, or None: not disclosed or not an address
    port: int = 0
    proto: str | None = None  # "http" or "https", when the proxy said


_PORT = re.compile(r"[0-9]{1,5}")


def read_node(text: str) -> tuple[str | None, int]:
    """An address as proxies write it: ``192.0.2.7``, ``192.0.2.7:4711``, ``2001:db8::1``,
    ``[2001:db8::1]`` or ``[2001:db8::1]:4711``. A zone (``%eth0``) or anything else gives None."""
    text = text.strip()
    if len(text) > MAX_NODE:  # no address is this long; and the cache below holds only short strings
        return None, 0
    return _read_node(text)


@lru_cache(maxsize=4096)
def _read_node(text: str) -> tuple[str | None, int]:
    if "%" in text:
        return None, 0
    port = ""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return None, 0
        port = rest[1:]
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host = text
    address = canonical_address(host) if host else None
    if address is None:
        return None, 0
    if port and (not _PORT.fullmatch(port) or int(port) > 65535):
        port = ""  # an obfuscated port (``_abc``) or garbage: the address still stands
    return address, int(port) if port else 0


def _proto(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip().lower()
    return value if value in SCHEMES else None


def x_forwarded_for(lines: list[bytes]) -> list[Hop]:
    """Every ``X-Forwarded-For`` line, in order, as one list; empty entries are skipped."""
    hops = [Hop(*read_node(entry)) for line in lines for entry in line.decode("latin-1").split(",") if entry.strip()]
    return hops[-MAX_HOPS:]


def x_forwarded_proto(lines: list[bytes]) -> list[str | None]:
    return [_proto(entry) for line in lines for entry in line.decode("latin-1").split(",") if entry.strip()]


_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
# One ``name=value`` pair; the value a token or a quoted string. ``[``, ``]`` and ``:`` are tolerated
# unquoted (RFC 7239 requires quotes there, but some proxies omit them and the meaning is plain).
_PAIR = re.compile(rf'\s*({_TOKEN})\s*=\s*("(?:[^"\\]|\\.)*"|[!#$%&\'*+.^_`|~0-9A-Za-z:\[\]-]*)\s*')
_QUOTED_PAIR = re.compile(r"\\(.)")


def _elements(line: str) -> list[str] | None:
    """Split at commas outside quoted strings; None if a quote is left open."""
    parts, start, quoted, escaped = [], 0, False, False
    for i, ch in enumerate(line):
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            parts.append(line[start:i])
            start = i + 1
    if quoted:
        return None
    parts.append(line[start:])
    return [p for p in parts if p.strip()]


def _pairs(element: str) -> dict[str, str] | None:
    """An element's parameters by lower-case name; None if it is not ``pair *(";" pair)`` or repeats a name."""
    found: dict[str, str] = {}
    pos = 0
    while True:
        m = _PAIR.match(element, pos)
        if m is None:
            return None
        name, value = m.group(1).lower(), m.group(2)
        if value.startswith('"'):
            value = _QUOTED_PAIR.sub(r"\1", value[1:-1])
        if name in found:
            return None
        found[name] = value
        pos = m.end()
        if pos == len(element):
            return found
        if element[pos] != ";":
            return None
        pos += 1


def forwarded(lines: list[bytes]) -> list[Hop]:
    """Every ``Forwarded`` line, in order, as one list of hops.

    An element without ``for=``, with ``for=unknown`` or an obfuscated ``for=_name``, or that cannot be
    parsed, is a hop whose address is not known. A line with an unclosed quote is one such hop.
    """
    hops: list[Hop] = []
    for raw in lines:
        elements = _elements(raw.decode("latin-1"))
        if elements is None:
            hops.append(Hop(None))
            continue
        for element in elements:
            pairs = _pairs(element)
            if pairs is None:
                hops.append(Hop(None))
                continue
            node = pairs.get("for")
            address, port = read_node(node) if node else (None, 0)
            hops.append(Hop(address, port, _proto(pairs.get("proto"))))
    return hops[-MAX_HOPS:]
