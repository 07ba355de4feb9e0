"""Forward authentication, for operators who put keygate beside their own API.

A reverse proxy (nginx ``auth_request``, Traefik ``ForwardAuth``, Envoy ``ext_authz``) or the API
itself sends each incoming request's headers to ``/keygate/authorize``. keygate authenticates it
exactly as it does a private APEX call (``aptoken``, or the four signed headers, with the same
replay, allowlist, throttling and audit rules) and answers ``200`` with the caller's identity in
``X-Keygate-*`` headers, or the APEX-shaped refusal the client should see.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from keygate.api import replies
from keygate.api.endpoints import authenticate_request
from keygate.domain.permissions import format_permissions, parse_permissions

PATH = "/keygate/authorize"

DESCRIPTION = (
    "Authenticate the request whose headers are sent here (`aptoken`/`APToken`, or `APIKey`, `Signature`, "
    "`UserId`, `Nonce`) and answer 200 with `X-Keygate-User-Id`, `X-Keygate-Username`, `X-Keygate-Permissions`, "
    "`X-Keygate-Api-Key` and `X-Keygate-Auth` (`password` or `key`). `require` (repeatable) names permissions the "
    "caller must hold (403 otherwise). Behind a proxy, list it in `KEYGATE_TRUSTED_PROXIES` so that "
    "`X-Forwarded-For` gives the client's address."
)


async def authorize(request: Request) -> Response:
    principal = await authenticate_request(request)
    for permission in parse_permissions(request.query_params.getlist("require")):
        principal.require_permission(permission)
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
