"""Reading APEX requests: payload from query and JSON body, credentials from headers, client IP."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
from typing import Any

from starlette.requests import Request

from keygate.domain.errors import InvalidRequest, PayloadTooLarge
from keygate.domain.iprules import parse_address

CREDENTIAL_HEADERS = ("apikey", "signature", "userid", "nonce")
MAX_HEADER_VALUE = 512


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
            return value.strip() != b"0"
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


def _header_map(request: Request) -> dict[bytes, bytes]:
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
    raw = _header_map(request).get(wire_name)
    return None if raw is None else _header_value(raw, name)


def _header_value(raw: bytes, name: str) -> str:
    if len(raw) > MAX_HEADER_VALUE:
        raise InvalidRequest(f"Header {name} is too long")
    return raw.decode("latin-1").strip()


_CREDENTIAL_NAMES = tuple((name.encode(), name) for name in CREDENTIAL_HEADERS)


def credential_headers(request: Request) -> dict[str, str] | None:
    """The four signing headers, if the request carries any of them."""
    found = _header_map(request)
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


class ClientAddress:
    """The client IP: the socket peer, unless that peer is a trusted proxy.

    Only then is ``X-Forwarded-For`` read, right to left, skipping trusted hops; the first untrusted
    address is the client. A header sent by anyone else is ignored, so it cannot be spoofed.
    """

    def __init__(self, trusted_proxies: tuple[str, ...]) -> None:
        self._trusted = tuple(ipaddress.ip_network(p, strict=False) for p in trusted_proxies)

    def _is_trusted(self, address: str) -> bool:
        ip = parse_address(address)
        return ip is not None and any(ip.version == n.version and ip in n for n in self._trusted)

    def __call__(self, request: Request) -> str | None:
        client = request.scope.get("client")
        peer = client[0] if client else None
        if peer is None or not self._trusted or not self._is_trusted(peer):
            return peer
        forwarded = request.headers.get("x-forwarded-for", "")
        hops = [h.strip() for h in forwarded.split(",") if h.strip()]
        for hop in reversed(hops):
            if parse_address(hop) is None:
                return peer  # a garbled chain is not trusted
            if not self._is_trusted(hop):
                return hop
        return peer
