"""Forward authentication, for operators who put keygate beside their own API.

A reverse proxy (nginx ``auth_request``, Traefik ``ForwardAuth``, Envoy ``ext_authz``) or the API
itself sends each incoming request's headers to ``/keygate/authorize``. keygate authenticates it
exactly as it does a private APEX call (``aptoken``, or the four signed headers, with the same
replay, allowlist, throttling and audit rules) and answers ``200`` with the caller's identity in
``X-Keygate-*`` headers, or the APEX-shaped refusal the client should see.
"""

from __future__ import annotations

import json

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from keygate.api import replies
from keygate.api.endpoints import Target, authenticate_request
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
    names: list[str] = list(request.query_params.getlist("require"))
    for name, value in request.scope["headers"]:
        if name == b"x-keygate-require":
            names.extend(value.decode("latin-1").split(","))
    return parse_permissions(names)


def original_target(request: Request) -> Target | None:
    """The method, path and query of the request the proxy asks about, for a Signature v2 to cover:
    ``X-Original-Method``/``X-Original-URI`` (nginx), ``X-Forwarded-Method``/``X-Forwarded-Uri`` (Traefik,
    Caddy), or the path after ``/keygate/authorize`` (Envoy's ``path_prefix``). None: the request itself."""
    found = {name: value for name, value in reversed(request.scope["headers"])}
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
    permissions = format_permissions(principal.permissions)
    headers = {
        "X-Keygate-User-Id": str(principal.user_id),
        "X-Keygate-Username": principal.user.username,
        "X-Keygate-Permissions": ",".join(permissions),
        "X-Keygate-Auth": principal.via.value,
        "Cache-Control": "no-store",
    }
    if principal.api_key:
        headers["X-Keygate-Api-Key"] = principal.api_key
    body = {"UserId": principal.user_id, "UserName": principal.user.username, "Permissions": permissions,
            "APIKey": principal.api_key, "Auth": principal.via.value}
    return replies.ApexJSON(body, headers=headers)


def install_forward_auth(app: FastAPI) -> None:
    params = [
        {"name": "aptoken", "in": "header", "required": False, "schema": {"type": "string"}, "description": "Session token"},
        *({"name": h, "in": "header", "required": False, "schema": {"type": "string"}} for h in ("APIKey", "Signature", "UserId", "Nonce")),
        {"name": "require", "in": "query", "required": False, "schema": {"type": "array", "items": {"type": "string", "enum": ["Trading", "Withdraw", "Deposit"]}},
         "style": "form", "explode": True, "description": "A permission the caller must hold"},
    ]
    generic = {"application/json": {"schema": {"$ref": "#/components/schemas/Generic"}}}
    for method in ("GET", "POST"):
        _route(app, method, params, generic)


def _route(app: FastAPI, method: str, params: list[dict[str, object]], generic: dict[str, object]) -> None:
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
