"""Forward authentication, for operators who put keygate beside their own API.

A reverse proxy (nginx ``auth_request``, Traefik ``ForwardAuth``, Envoy ``ext_authz``) or the API
itself sends each incoming request's headers to ``/keygate/authorize``. keygate authenticates it
exactly as it does a private APEX call (``aptoken``, or the four signed headers, with the same
replay, allowlist, throttling and audit rules) and answers ``200`` with the caller's identity in
``X-Keygate-*`` headers, or the APEX-shaped refusal the client should see.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from keygate.api import replies
from keygate.api.endpoints import Target, authenticate_request
from keygate.api.wire import header_map
from keygate.domain.errors import KeygateError
from keygate.domain.permissions import Permission, format_permissions, parse_permissions

PATH = "/keygate/authorize"

DESCRIPTION = (
    "Authenticate the request whose headers are sent here (`aptoken`/`APToken`, or `APIKey`, `Signature`, "
    "`UserId`, `Nonce`) and answer 200 with `X-Keygate-User-Id`, `X-Keygate-Username`, `X-Keygate-Permissions`, "
    "`X-Keygate-Api-Key` and `X-Keygate-Auth` (`password` or `key`). `require` (repeatable) names permissions the "
    "caller must hold (403 otherwise); so does the `X-Keygate-Require` header (comma-separated). A refusal carries its APEX body also in `X-Keygate-Error`. Behind a proxy, list it in `KEYGATE_TRUSTED_PROXIES` so that "
    "`X-Forwarded-For` gives the client's address. A Signature v2 (RFC 9421: `Signature-Input`, `Signature`, "
    "`Content-Digest`) covers the original request: the proxy sends its method and URI in `X-Original-Method`/"
    "`X-Original-URI` (or `X-Forwarded-Method`/`X-Forwarded-Uri`); keygate checks `Content-Digest` against the body "
    "when the body reaches it, and the upstream checks it otherwise (docs/deployment.md)."
)


ERROR_HEADER = "X-Keygate-Error"


def refusal(exc: KeygateError) -> Response:
    """The APEX refusal, its body also in ``X-Keygate-Error`` (JSON, ASCII): nginx's ``auth_request``
    keeps only the status of this reply, but can hand a header of it to the client (see the README)."""
    reply = replies.error(exc)
    reply.headers[ERROR_HEADER] = json.dumps(json.loads(bytes(reply.body)), separators=(",", ":"))
    reply.headers["Cache-Control"] = "no-store"
    return reply


def required(request: Request) -> frozenset[Permission]:
    """Permissions named by ``?require=`` (repeatable) and by ``X-Keygate-Require`` lines (comma-separated).

    Envoy's ``ext_authz`` cannot add a query to its check request, but can add a header. Either can only
    add requirements, so a client that sends the header itself can only refuse itself.
    """
    scope = request.scope
    names: list[str] = list(request.query_params.getlist("require")) if scope.get("query_string") else []
    for name, value in scope["headers"]:
        if name == b"x-keygate-require":
            names.extend(value.decode("latin-1").split(","))
    return parse_permissions(names) if names else _NONE


_NONE: frozenset[Permission] = frozenset()


def original_target(request: Request) -> Target | None:
    """The method, path and query of the request the proxy asks about, for a Signature v2 to cover:
    ``X-Original-Method``/``X-Original-URI`` (nginx), ``X-Forwarded-Method``/``X-Forwarded-Uri`` (Traefik,
    Caddy), or the path after ``/keygate/authorize`` (Envoy's ``path_prefix``). None: the request itself."""
    found = header_map(request)  # built once per request, shared with the auth path
    if b"signature-input" not in found:
        return None  # only a Signature v2 covers the original request

    def field(*names: bytes) -> str | None:
        for name in names:
            if found.get(name, b"").strip():
                return found[name].decode("latin-1").strip()
        return None

    method = field(b"x-original-method", b"x-forwarded-method")
    uri = field(b"x-original-uri", b"x-forwarded-uri")
    if uri is None:
        raw: bytes = request.scope.get("raw_path") or request.scope["path"].encode()
        suffix = raw.decode("latin-1")[len(PATH):]
        if not suffix.startswith("/"):
            return None if method is None else (method, raw.decode("latin-1"), request.scope.get("query_string", b"").decode("latin-1"))
        query = request.scope.get("query_string", b"").decode("latin-1")
        uri = suffix + ("?" + query if query else "")
    path, _, query = uri.partition("?")
    return ((method or request.method).upper(), path or "/", query)


async def authorize(request: Request) -> Response:
    try:
        principal = await authenticate_request(request, original_target(request))
        for permission in required(request):
            principal.require_permission(permission)
    except KeygateError as exc:
        return refusal(exc)
    username = principal.user.username if principal.user is not None else ""  # always a user's: token or signature
    return _identity(principal.user_id, username, principal.permissions, principal.via.value, principal.api_key)


_Identity = tuple[int, str, frozenset[Permission], str, "str | None"]
_REPLIES: dict[_Identity, tuple[bytes, list[tuple[bytes, bytes]]]] = {}
_REPLIES_MAX = 4096
_FORMATTED: dict[frozenset[Permission], tuple[list[str], bytes]] = {}


def _identity(user_id: int, username: str, held: frozenset[Permission], via: str, api_key: str | None) -> Response:
    """The 200 reply: the identity in ``X-Keygate-*`` headers and in the body, as
    ``ApexJSON(body, headers={...})`` writes it, headers in the same order. This is the reply of every
    request an operator's proxy lets through, and it depends only on these five values (immutable),
    so it is rendered once per identity and kept (a bounded table, emptied when full)."""
    identity = (user_id, username, held, via, api_key)
    found = _REPLIES.get(identity)
    if found is None:
        if len(_REPLIES) >= _REPLIES_MAX:
            _REPLIES.clear()
        found = _REPLIES[identity] = _render_identity(*identity)
    return replies.StoredReply(*found)


def _render_identity(user_id: int, username: str, held: frozenset[Permission], via: str,
                     api_key: str | None) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    formatted = _FORMATTED.get(held)
    if formatted is None:
        names = format_permissions(held)
        formatted = _FORMATTED[held] = (names, ",".join(names).encode("latin-1"))
    permissions, joined = formatted
    body = replies.encode({"UserId": user_id, "UserName": username, "Permissions": permissions, "APIKey": api_key,
                           "Auth": via})
    raw = [
        (b"x-keygate-user-id", str(user_id).encode("latin-1")),
        (b"x-keygate-username", username.encode("latin-1")),
        (b"x-keygate-permissions", joined),
        (b"x-keygate-auth", via.encode("latin-1")),
        (b"cache-control", b"no-store"),
    ]
    if api_key:
        raw.append((b"x-keygate-api-key", api_key.encode("latin-1")))
    raw.append((b"content-length", str(len(body)).encode("latin-1")))
    raw.append((b"content-type", b"application/json"))
    return body, raw


def install_forward_auth(app: FastAPI) -> None:
    params: list[Mapping[str, object]] = [
        {"name": "aptoken", "in": "header", "required": False, "schema": {"type": "string"}, "description": "Session token"},
        *({"name": h, "in": "header", "required": False, "schema": {"type": "string"}} for h in ("APIKey", "Signature", "UserId", "Nonce")),
        {"name": "require", "in": "query", "required": False, "schema": {"type": "array", "items": {"type": "string", "enum": ["Trading", "Withdraw", "Deposit"]}},
         "style": "form", "explode": True, "description": "A permission the caller must hold"},
    ]
    generic = {"application/json": {"schema": {"$ref": "#/components/schemas/Generic"}}}
    for method in ("GET", "POST"):
        _route(app, method, params, generic)


def _route(app: FastAPI, method: str, params: Sequence[Mapping[str, object]], generic: Mapping[str, object]) -> None:
    # Envoy's ext_authz appends the client's path to ``path_prefix``: /keygate/authorize/AP/SendOrder.
    app.add_api_route(PATH + "/{forwarded_path:path}", authorize, methods=[method], include_in_schema=False,
                      name=f"keygate_authorize_suffix_{method.lower()}", response_class=replies.ApexJSON)
    app.add_api_route(
        PATH, authorize, methods=[method], name=f"keygate_authorize_{method.lower()}",
        operation_id=f"keygate_authorize_{method.lower()}",
        summary="Forward authentication for the operator's own API", description=DESCRIPTION, tags=["Forward auth"],
        response_class=replies.ApexJSON, openapi_extra={"parameters": params},
        responses={
            200: {"description": "Authenticated; identity in X-Keygate-* headers",
                  "content": {"application/json": {"schema": {"type": "object", "properties": {
                      "UserId": {"type": "integer"}, "UserName": {"type": "string"},
                      "Permissions": {"type": "array", "items": {"type": "string"}},
                      "APIKey": {"type": ["string", "null"]}, "Auth": {"type": "string"}}}}}},
            400: {"description": "Malformed credentials", "content": generic},
            401: {"description": "Not authenticated", "content": generic},
            403: {"description": "Missing a required permission", "content": generic},
            429: {"description": "Too many failed attempts", "content": generic},
            503: {"description": "Database or shared state store (Redis) unreachable", "content": generic},
        },
    )
