"""The OpenAPI description of the APEX endpoints: headers, bodies and reply shapes."""

from __future__ import annotations

from typing import Any

from keygate.api.endpoints import Endpoint

_TYPES: dict[str, dict[str, Any]] = {
    "string": {"type": "string"},
    "integer|string": {"oneOf": [{"type": "integer"}, {"type": "string"}]},
    "array": {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "string", "description": "entries separated by commas"}]},
}

_NULLABLE_STR = {"type": ["string", "null"]}

SCHEMAS: dict[str, dict[str, Any]] = {
    "Generic": {
        "type": "object",
        "required": ["result", "errormsg", "errorcode"],
        "properties": {
            "result": {"type": "boolean"},
            "errormsg": _NULLABLE_STR,
            "errorcode": {"type": "integer", "description": "0 ok, 20 Not Authorized, 100 Invalid Request, 101 Operation Failed, 102 Server Error, 104 Resource Not Found"},
            "detail": _NULLABLE_STR,
        },
    },
    "Pong": {"type": "object", "required": ["msg"], "properties": {"msg": {"type": "string", "const": "PONG"}}},
    "User": {
        "type": "object",
        "properties": {
            "UserId": {"type": "integer"}, "UserName": {"type": "string"}, "Email": {"type": "string"},
            "EmailVerified": {"type": "boolean"}, "AccountId": {"type": "integer"}, "OMSId": {"type": "integer"},
            "Use2FA": {"type": "boolean"},
        },
    },
    "Authenticated": {
        "type": "object",
        "description": "Success carries `SessionToken` and `User`; a password sign-in of a 2FA user carries `Requires2FA` and `Pending2FaToken`; failure has `Authenticated: false`.",
        "required": ["Authenticated"],
        "properties": {
            "Authenticated": {"type": "boolean"}, "SessionToken": {"type": "string"}, "User": {"$ref": "#/components/schemas/User"},
            "Locked": {"type": "boolean"}, "Requires2FA": {"type": "boolean"}, "EnforceEnable2FA": {"type": "boolean"},
            "TwoFAType": _NULLABLE_STR, "TwoFAToken": _NULLABLE_STR, "AuthType": {"type": "string"}, "AddtlInfo": {"type": "string"},
            "Pending2FaToken": {"type": "string"}, "errormsg": _NULLABLE_STR, "errorcode": {"type": "integer"},
        },
    },
    "AuthFailure": {
        "type": "object",
        "required": ["Authenticated", "Locked", "errormsg"],
        "properties": {"Authenticated": {"type": "boolean", "const": False}, "Locked": {"type": "boolean"}, "errormsg": {"type": "string"}, "errorcode": {"type": "integer"}},
    },
    "Authenticated2FA": {
        "type": "object",
        "required": ["Authenticated", "UserId", "SessionToken"],
        "properties": {"Authenticated": {"type": "boolean"}, "UserId": {"type": "integer"}, "SessionToken": {"type": "string"}, "errormsg": _NULLABLE_STR},
    },
    "Key": {
        "type": "object",
        "properties": {
            "APIKey": {"type": "string"}, "UserId": {"type": "integer"}, "Label": {"type": "string"},
            "Permissions": {"type": "array", "items": {"type": "string", "enum": ["Trading", "Withdraw", "Deposit"]}},
            "IpAllowlist": {"type": "array", "items": {"type": "string"}}, "Nonce": {"type": "string"},
            "CreatedAt": {"type": "string", "format": "date-time"}, "UpdatedAt": {"type": "string", "format": "date-time"},
            "LastUsedAt": {"type": ["string", "null"], "format": "date-time"},
            "ReplayMode": {"type": "string", "enum": ["compatible", "increasing", "unique"]},
            "ExpiresAt": {"type": ["string", "null"], "format": "date-time"},
            "PreviousSecretValidUntil": {"type": ["string", "null"], "format": "date-time"},
        },
    },
    "CreatedKey": {"allOf": [{"$ref": "#/components/schemas/Key"}, {"type": "object", "required": ["APIKey", "APISecret", "UserId", "Permissions", "Nonce"], "properties": {"APISecret": {"type": "string", "description": "Shown in this reply only, never again"}}}]},
    "KeyList": {"type": "array", "items": {"$ref": "#/components/schemas/Key"}},
    "StringList": {"type": "array", "items": {"type": "string"}},
    "AuditEvent": {
        "type": "object",
        "properties": {
            "EventId": {"type": "integer"}, "At": {"type": "string", "format": "date-time"}, "Action": {"type": "string"},
            "Outcome": {"type": "string"}, "Reason": _NULLABLE_STR, "ActorUserId": {"type": ["integer", "null"]},
            "SubjectUserId": {"type": ["integer", "null"]}, "APIKey": _NULLABLE_STR, "ClientIp": _NULLABLE_STR, "Detail": _NULLABLE_STR,
        },
    },
    "AuditList": {"type": "array", "items": {"$ref": "#/components/schemas/AuditEvent"}},
    "IntegerList": {"type": "array", "items": {"type": "integer"}},
    "Enable2FA": {"type": "object", "properties": {"ManualCode": {"type": "string"}, "ProvisioningUri": {"type": "string"}, "result": {"type": "boolean"}, "errormsg": _NULLABLE_STR}},
}


def _header(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": False, "schema": {"type": "string"}, "description": description}


_SIGNED = [
    _header("APIKey", "The API key"),
    _header("Signature", "hex(HMAC-SHA256(key=APISecret, msg=Nonce + UserId + APIKey)), 64 hex digits"),
    _header("UserId", "The key owner's user id"),
    _header("Nonce", "Any string or number; part of the signed message"),
]
_TOKEN = _header("aptoken", "Session token from AuthenticateUser (`APToken` works too; header names ignore case)")


def _ref(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}


_NULL_MEANS_ABSENT = frozenset({"UserId", "Permissions", "IpAllowlist", "Label", "ReplayMode", "ExpiresAt"})


def _nullable(ep: Endpoint, name: str) -> bool:
    """Whether the handler reads JSON ``null`` in this body field as if the field were left out."""
    if ep.auth not in ("session", "password-session", "admin") or ep.name in ("LockUser", "UnlockUser"):
        return False
    if ep.name == "GetAuditLog":
        return name != "Limit"
    return name in _NULL_MEANS_ABSENT


def _property(ep: Endpoint, name: str, kind: str) -> dict[str, Any]:
    return {"anyOf": [_TYPES[kind], {"type": "null"}]} if _nullable(ep, name) else _TYPES[kind]


def operation_extra(ep: Endpoint, method: str) -> dict[str, Any]:
    params: list[dict[str, Any]] = []
    if ep.auth == "credentials":
        params += _SIGNED
        if ep.name == "Authenticate":
            params.append(_header("Authorization", "Basic base64(username:password)"))
        if ep.name == "Authenticate2FA":
            params.append(_header("Pending2FaToken", "The token from the password sign-in"))
    elif ep.auth in ("session", "password-session", "admin"):
        params += [_TOKEN, *_SIGNED]
    params += [{"name": n, "in": "query", "required": False, "schema": {"type": "string"}, "description": d} for n, d in ep.query]
    extra: dict[str, Any] = {"parameters": params}
    if method == "POST" and ep.body:
        extra["requestBody"] = {
            "required": False,
            "content": {"application/json": {"schema": {"type": "object", "properties": {k: _property(ep, k, v) for k, v in ep.body.items()}}}},
        }
    return extra


def responses_for(ep: Endpoint) -> dict[int | str, dict[str, Any]]:
    ok: dict[int | str, dict[str, Any]] = {200: {"description": "Success", "content": _ref(ep.reply)}}
    if ep.auth == "none":
        return ok
    if ep.auth == "credentials":
        fail = {"content": _ref("AuthFailure")}
        ok.update({400: {"description": "Malformed credentials", **fail}, 401: {"description": "Credentials refused", **fail},
                   413: {"description": "Body too large", "content": _ref("Generic")},
                   429: {"description": "Too many failed attempts; see Retry-After", **fail},
                   503: {"description": "Database or shared state store (Redis) unreachable; authentication fails closed", **fail}})
        return ok
    err = {"content": _ref("Generic")}
    ok.update({
        400: {"description": "Invalid request", **err}, 401: {"description": "Not authorized", **err},
        403: {"description": "Not allowed for this session or key", **err}, 404: {"description": "Not found", **err},
        409: {"description": "Conflict", **err}, 413: {"description": "Body too large", **err},
        429: {"description": "Too many failed attempts; see Retry-After", **err},
        503: {"description": "Database or shared state store (Redis) unreachable; authentication fails closed", **err},
    })
    return ok
