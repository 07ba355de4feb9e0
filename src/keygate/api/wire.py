"""Reading APEX requests: payload from query and JSON body, credentials from headers, client IP."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
from typing import Any

from starlette.requests import Request
from starlette.types import Scope

from keygate.api import forwarded as forwarded_headers
from keygate.api.forwarded import Hop
from keygate.domain.errors import InvalidRequest, PayloadTooLarge
from keygate.domain.iprules import canonical_address, parse_address

CREDENTIAL_HEADERS = ("apikey", "signature", "userid", "nonce")
MAX_HEADER_VALUE = 512
RESOLVED_KEY = "keygate.client_resolved"  # set by ProxyHeaders once scope["client"] and ["scheme"] are final


async def read_body(request: Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def may_have_body(request: Request) -> bool:
    """Whether the request announces a body: HTTP/1.1 has none without Content-Length or Transfer-Encoding."""
    for name, value in request.scope["headers"]:
        if name == b"content-length":
            return bool(value.strip() != b"0")
        if name == b"transfer-encoding":
            return True
    return False


async def read_payload(request: Request, limit: int = 65536) -> dict[str, Any]:
    """Merge query parameters and a JSON object body; keys lower-cased (APEX ignores key case)."""
    payload: dict[str, Any] = (
        {k.lower(): v for k, v in request.query_params.items()} if request.scope.get("query_string") else {}
    )
    if not may_have_body(request):
        return payload
    body = await read_body(request, limit)
    if body.strip():
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise InvalidRequest("Request body is not valid JSON; send a JSON object") from None
        if not isinstance(data, dict):
            raise InvalidRequest("Request body must be a JSON object")
        try:
            # JSON may escape lone surrogates (``"\ud800"``), which no database or reply can encode.
            json.dumps(data, ensure_ascii=False).encode()
        except (UnicodeEncodeError, RecursionError):
            raise InvalidRequest("Request body holds text that is not valid Unicode") from None
        payload.update({str(k).lower(): v for k, v in data.items()})
    return payload


def header_map(request: Request) -> dict[bytes, bytes]:
    """The request's headers by (lower-case) name, the first of repeated ones winning as in
    ``request.headers.get``; built once per request, since the auth path reads up to five."""
    scope = request.scope
    found: dict[bytes, bytes] | None = scope.get("keygate.headers")
    if found is None:
        found = scope["keygate.headers"] = dict(reversed(scope["headers"]))
    return found


_WIRE_NAMES: dict[str, bytes] = {}  # header names as ASGI gives them; only names written in this code


def header(request: Request, name: str) -> str | None:
    wire_name = _WIRE_NAMES.get(name)
    if wire_name is None:
        wire_name = _WIRE_NAMES[name] = name.lower().encode("latin-1")
    raw = header_map(request).get(wire_name)
    return None if raw is None else _header_value(raw, name)


def _header_value(raw: bytes, name: str) -> str:
    if len(raw) > MAX_HEADER_VALUE:
        raise InvalidRequest(f"Header {name} is too long")
    return raw.decode("latin-1").strip()


_CREDENTIAL_NAMES = tuple((name.encode(), name) for name in CREDENTIAL_HEADERS)


def credential_headers(request: Request) -> dict[str, str] | None:
    """The four signing headers, if the request carries any of them."""
    found = header_map(request)
    values: dict[str, str] = {}
    for raw_name, name in _CREDENTIAL_NAMES:
        raw = found.get(raw_name)
        if raw is not None:
            values[name] = _header_value(raw, name)
    return values if any(values.values()) else None


def basic_auth(request: Request) -> tuple[str, str] | None:
    value = header(request, "authorization")
    if not value or not value[:6].lower() == "basic ":
        return None
    try:
        decoded = base64.b64decode(value[6:].strip(), validate=True).decode()
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise InvalidRequest("Authorization header is not valid Basic credentials") from None
    username, sep, password = decoded.partition(":")
    if not sep:
        raise InvalidRequest("Authorization header is not valid Basic credentials")
    return username, password


WEBSOCKET_KEY = "keygate.websocket"  # set in the scope of a request made from a WebSocket frame


def over_websocket(request: Request) -> bool:
    """Whether this request is a WebSocket frame's: its messages then name frame fields, not headers."""
    return WEBSOCKET_KEY in request.scope


def session_token(request: Request) -> str | None:
    return header(request, "aptoken")


class ConflictingForwarding(InvalidRequest):
    """A trusted proxy passed on ``X-Forwarded-For`` and ``Forwarded`` that name different clients."""


class ClientAddress:
    """Who the client is and which scheme it used: the socket peer, unless that peer is a trusted proxy.

    Only then are ``X-Forwarded-For`` (every line, as one list) with ``X-Forwarded-Proto``, and RFC 7239
    ``Forwarded``, read, right to left, skipping trusted hops; the first untrusted address is the
    client. A hop that does not name an address (``unknown``, an obfuscated name, garbage, a zone id)
    ends the walk: the client is then the trusted proxy that reported it. When every hop is trusted, the
    leftmost is the client. A header sent by anyone else is ignored, so it cannot be spoofed.

    When both headers are present they must name the same client; if they do not, one of them came
    from the client through a proxy that writes only the other, and the request is refused
    (``ConflictingForwarding``, a 400): believing either could be believing the client, and answering
    as the proxy would let a client spend the proxy's own failure allowance. The address that comes out is canonical (``keygate.domain.iprules.canonical_address``)
    or None, never longer than 39 characters.

    ``keygate.api.proxy.ProxyHeaders`` resolves this once per HTTP request and per WebSocket
    connection and writes it into the scope; calling the object reads it back from there.
    """

    def __init__(self, trusted_proxies: tuple[str, ...]) -> None:
        self._trusted = tuple(ipaddress.ip_network(p, strict=False) for p in trusted_proxies)

    def is_trusted(self, address: str | None) -> bool:
        ip = parse_address(address) if address else None
        return ip is not None and any(ip.version == n.version and ip in n for n in self._trusted)

    def _walk(self, hops: list[Hop], peer: tuple[str, int]) -> tuple[tuple[str, int], int | None]:
        """The client, and the index of the hop that named it (or reported it unreadably); None: no hop."""
        current, last = peer, None
        for i in range(len(hops) - 1, -1, -1):
            hop = hops[i]
            if hop.address is None:
                return current, i
            if not self.is_trusted(hop.address):
                return (hop.address, hop.port), i
            current, last = (hop.address, hop.port), i
        return current, last

    def resolve(self, scope: Scope) -> tuple[tuple[str, int] | None, str | None]:
        """``(client, proto)``: the client as ASGI writes it (``(address, port)``, or None when unknown)
        and ``"http"``/``"https"`` when a trusted proxy said which one the client used."""
        socket_peer: tuple[object, object] | None = scope.get("client")
        address = canonical_address(str(socket_peer[0])) if socket_peer else None
        if socket_peer is None or address is None:
            return None, None
        peer = (address, socket_peer[1] if isinstance(socket_peer[1], int) else 0)
        if not self._trusted or not self.is_trusted(address):
            return peer, None
        xff: list[bytes] = []
        xfp: list[bytes] = []
        fwd: list[bytes] = []
        for name, value in scope["headers"]:
            if name == b"x-forwarded-for":
                xff.append(value)
            elif name == b"forwarded":
                fwd.append(value)
            elif name == b"x-forwarded-proto":
                xfp.append(value)
        client, proto = peer, None
        protos = forwarded_headers.x_forwarded_proto(xfp)
        if protos:
            proto = protos[0]
        if xff:
            hops = forwarded_headers.x_forwarded_for(xff)
            client, at = self._walk(hops, peer)
            if len(protos) > 1 and len(protos) == len(hops) and at is not None:
                proto = protos[at]  # a list of them: the one written beside the client's hop
        if fwd:
            elements = forwarded_headers.forwarded(fwd)
            named, at = self._walk(elements, peer)
            if xff and named[0] != client[0]:
                raise ConflictingForwarding(
                    "X-Forwarded-For and Forwarded name different clients; a proxy must write one of them")
            client = named
            proto = (elements[at].proto if at is not None else None) or proto
        return client, proto

    def __call__(self, request: Request) -> str | None:
        scope = request.scope
        if RESOLVED_KEY not in scope:  # a scope built without the middleware (a WebSocket frame's)
            client, _ = self.resolve(scope)
            return client[0] if client else None
        client = scope.get("client")
        return client[0] if client else None
