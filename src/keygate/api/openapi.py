"""The OpenAPI description of the APEX endpoints: headers, bodies and reply shapes."""

from __future__ import annotations

from typing import Any

from keygate.api.endpoints import Endpoint
from keygate.domain.permissions import Permission
from keygate.domain.replay import ReplayMode

_TYPES: dict[str, dict[str, Any]] = {
    "string": {"type": "string"},
    "integer|string": {"oneOf": [{"type": "integer"}, {"type": "string"}]},
    "boolean": {"type": "boolean"},
    "array": {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "string", "description": "entries separated by commas"}]},
}

_NULLABLE_STR = {"type": ["string", "null"]}
_TIME = {"type": "string", "format": "date-time"}
_NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}


def _object(properties: dict[str, Any], required: list[str] | None = None, closed: bool = False, **extra: Any) -> dict[str, Any]:
    """An object schema; ``required`` defaults to every property (a reply always carries them all)."""
    schema: dict[str, Any] = {"type": "object", "required": list(properties) if required is None else required, "properties": properties}
    if closed:
        schema["additionalProperties"] = False
    return {**schema, **extra}


_APEX_TIME = {"type": "string", "format": "date-time", "description": "UTC, whole seconds: `2017-10-26T17:25:58Z`; `0001-01-01T00:00:00Z` means none"}

_USER = {
    "UserId": {"type": "integer"}, "UserName": {"type": "string"}, "Email": {"type": "string"},
    "PasswordHash": {"type": "string", "const": "", "description": "Always empty, as in APEX: the hash never leaves keygate"},
    "PendingEmailCode": {"type": "string", "const": ""},
    "EmailVerified": {"type": "boolean"}, "AccountId": {"type": "integer"},
    "DateTimeCreated": {**_APEX_TIME, "description": "When the user was created, UTC: `2017-10-26T17:25:58Z`"},
    "AffiliateId": {"type": "integer", "const": 0}, "RefererId": {"type": "integer", "const": 0},
    "OMSId": {"type": "integer"}, "Use2FA": {"type": "boolean"},
    "Salt": {"type": "string", "const": "", "description": "Always empty, as in APEX"},
    "PendingCodeTime": {**_APEX_TIME, "const": "0001-01-01T00:00:00Z"},
    "Locked": {"type": "boolean", "description": "Locked now, by an administrator or after too many failed sign-ins"},
    "LockedTime": {**_APEX_TIME, "description": "For a lock after failed sign-ins, when it ends; otherwise `0001-01-01T00:00:00Z`"},
    "NumberOfFailedAttempt": {"type": "integer", "minimum": 0, "description": "Always 0: failures are counted per window, apart from the user"},
    "MarginBorrowerEnabled": {"type": "boolean", "const": False}, "MarginAcquisitionHalt": {"type": "boolean", "const": False},
    "OperatorId": {"type": "integer"},
}

_AUTH_SUCCESS = {
    "Authenticated": {"type": "boolean", "const": True}, "SessionToken": {"type": "string"},
    "User": {"$ref": "#/components/schemas/User"}, "Locked": {"type": "boolean"}, "Requires2FA": {"type": "boolean"},
    "EnforceEnable2FA": {"type": "boolean"}, "TwoFAType": _NULLABLE_STR, "TwoFAToken": _NULLABLE_STR, "errormsg": _NULLABLE_STR,
}
_AUTH_PENDING = {
    "Authenticated": {"type": "boolean", "const": True}, "Requires2FA": {"type": "boolean", "const": True},
    "AuthType": {"type": "string"}, "AddtlInfo": {"type": "string"}, "Pending2FaToken": {"type": "string"},
    "Locked": {"type": "boolean"}, "errormsg": _NULLABLE_STR,
}
_KEY = {
    "APIKey": {"type": "string"}, "UserId": {"type": "integer"}, "Label": {"type": "string"},
    "Permissions": {"type": "array", "items": {"type": "string", "enum": [p.value for p in Permission]}},
    "IpAllowlist": {"type": "array", "items": {"type": "string"}}, "Nonce": {"type": "string"},
    "CreatedAt": _TIME, "UpdatedAt": _TIME, "LastUsedAt": _NULLABLE_TIME,
    "ReplayMode": {"type": "string", "enum": [m.value for m in ReplayMode]},
    "ExpiresAt": _NULLABLE_TIME, "PreviousSecretValidUntil": _NULLABLE_TIME,
    "KeyType": {"type": "string", "enum": ["hmac", "ed25519"],
                "description": "hmac: keygate holds a secret (APEX's HMAC-SHA256 signature); ed25519: keygate holds only a public key"},
    "PublicKeyFingerprint": {"type": ["string", "null"],
                             "description": "ed25519 keys: `SHA256:` and the unpadded base64 of the SHA-256 of the 32-byte public key; null for hmac"},
    "RequiresSignatureV2": {"type": "boolean", "description": "Signature v2 (RFC 9421) only: APEX signatures are refused"},
}

SCHEMAS: dict[str, dict[str, Any]] = {
    "Generic": _object({
        "result": {"type": "boolean"},
        "errormsg": _NULLABLE_STR,
        "errorcode": {"type": "integer", "description": "0 ok, 20 Not Authorized, 100 Invalid Request, 101 Operation Failed, 102 Server Error, 104 Resource Not Found, 106 Operation Not Supported"},
        "detail": _NULLABLE_STR,
    }, closed=True),
    "Pong": _object({"msg": {"type": "string", "const": "PONG"}}, closed=True),
    "User": _object(_USER, closed=True, description="APEX's full user object: every field present, none null"),
    "AuthSuccess": _object(_AUTH_SUCCESS, closed=True),
    "WebAuthSuccess": _object({**_AUTH_SUCCESS, "UserId": {"type": "string", "description": "The user's id, as a string (as APEX sends it)"}}, closed=True),
    "AuthPending2FA": _object(_AUTH_PENDING, closed=True),
    "Authenticated": {
        "description": "Success carries `SessionToken` and `User`; a password sign-in of a 2FA user carries `Requires2FA` and `Pending2FaToken`.",
        "oneOf": [{"$ref": "#/components/schemas/AuthSuccess"}, {"$ref": "#/components/schemas/AuthPending2FA"}],
    },
    "WebAuthenticated": {
        "description": "As `Authenticated`; success also carries APEX's top-level `UserId` string.",
        "oneOf": [{"$ref": "#/components/schemas/WebAuthSuccess"}, {"$ref": "#/components/schemas/AuthPending2FA"}],
    },
    "AuthFailure": _object(
        {"Authenticated": {"type": "boolean", "const": False}, "Locked": {"type": "boolean"}, "errormsg": {"type": "string"}, "errorcode": {"type": "integer"}},
        closed=True,
    ),
    "Authenticated2FA": _object(
        {"Authenticated": {"type": "boolean", "const": True}, "UserId": {"type": "integer"}, "SessionToken": {"type": "string"}, "errormsg": _NULLABLE_STR},
        closed=True,
    ),
    "Key": _object(_KEY, closed=True),
    "CreatedKey": _object({**_KEY, "APISecret": {"type": "string", "description": "hmac keys: shown in this reply only, never again; "
                                                                               "absent for an ed25519 key (keygate has no secret)"}},
                          required=list(_KEY), closed=True),
    "KeyList": {"type": "array", "items": {"$ref": "#/components/schemas/Key"}},
    "KeyUsage": _object({
        "APIKey": {"type": "string"}, "UserId": {"type": "integer"}, "LastUsedAt": _NULLABLE_TIME, "LastUsedIp": _NULLABLE_STR,
        "Requests": {"type": "integer", "description": "Accepted calls in the window"},
        "Refusals": {"type": "integer", "description": "Refused calls naming the key in the window"},
        "Hours": {"type": "array", "items": _object({"Hour": _TIME, "Requests": {"type": "integer"}, "Refusals": {"type": "integer"}},
                                                    closed=True)},
    }, closed=True),
    "StringList": {"type": "array", "items": {"type": "string"}},
    "PermissionList": {"type": "array", "items": {"type": "string", "enum": [p.value for p in Permission]}},
    "AuditEvent": _object({
        "EventId": {"type": "integer"}, "At": _TIME, "Action": {"type": "string"},
        "Outcome": {"type": "string"}, "Reason": _NULLABLE_STR, "ActorUserId": {"type": ["integer", "null"]},
        "Actor": {"type": ["string", "null"], "enum": ["user", "operator", "system", None],
                  "description": "Who acted: a user (ActorUserId), the operator (the keygate command) or keygate itself"},
        "SubjectUserId": {"type": ["integer", "null"]}, "APIKey": _NULLABLE_STR, "ClientIp": _NULLABLE_STR, "Detail": _NULLABLE_STR,
    }, closed=True),
    "AuditList": {"type": "array", "items": {"$ref": "#/components/schemas/AuditEvent"}},
    "IntegerList": {"type": "array", "items": {"type": "integer"}},
    "Enable2FA": _object({"ManualCode": {"type": "string"}, "ProvisioningUri": {"type": "string"}, "result": {"type": "boolean"}, "errormsg": _NULLABLE_STR}, closed=True),
}


def _header(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": False, "schema": {"type": "string"}, "description": description}


_SIGNED = [
    _header("APIKey", "The API key"),
    _header("Signature", "hex(HMAC-SHA256(key=APISecret, msg=Nonce + UserId + APIKey)), 64 hex digits; for an ed25519 key "
                         "the Ed25519 signature of the same message, base64 (standard or URL-safe, padding optional) or 128 hex digits"),
    _header("UserId", "The key owner's user id"),
    _header("Nonce", "Any string or number; part of the signed message"),
]
_TOKEN = _header("aptoken", "Session token from AuthenticateUser (`APToken` works too; header names ignore case)")


def _ref(name: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}


_NULL_MEANS_ABSENT = frozenset({"UserId", "Permissions", "IpAllowlist", "Label", "ReplayMode", "ExpiresAt", "RequiresSignatureV2"})


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


_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before trying again", "schema": {"type": "string"}}}


def responses_for(ep: Endpoint, refusal_status: str = "4xx") -> dict[int | str, dict[str, Any]]:
    """The replies of one endpoint. With ``refusal_status="200"`` (``KEYGATE_REFUSAL_STATUS``) the
    refusals are answered with 200, so the 200 reply is the success or the refusal body."""
    success = _ref(ep.reply)
    refusals: dict[int | str, dict[str, Any]]
    if ep.auth == "none":
        refusals = {413: {"description": "Body too large", "content": _ref("Generic")}}
        fail_schema = "Generic"
    elif ep.auth == "credentials":
        fail = {"content": _ref("AuthFailure")}
        fail_schema = "AuthFailure"
        refusals = {400: {"description": "Malformed credentials", **fail}, 401: {"description": "Credentials refused", **fail},
                    # refused before the body is read (Content-Length) or while reading it (chunked)
                    413: {"description": "Body too large", "content": _any_of("Generic", "AuthFailure")},
                    429: {"description": "Too many failed attempts; see Retry-After", "headers": _RETRY_AFTER, **fail}}
    else:
        err = {"content": _ref("Generic")}
        fail_schema = "Generic"
        refusals = {
            400: {"description": "Invalid request", **err}, 401: {"description": "Not authorized", **err},
            403: {"description": "Not allowed for this session or key", **err}, 404: {"description": "Not found", **err},
            409: {"description": "Conflict", **err}, 413: {"description": "Body too large", **err},
            429: {"description": "Too many failed attempts; see Retry-After", "headers": _RETRY_AFTER, **err},
        }
    faults: dict[int | str, dict[str, Any]] = {}
    if ep.auth != "none":
        faults[503] = {"description": "Database or shared state store (Redis) unreachable; authentication fails closed", "content": _ref(fail_schema)}
    if refusal_status == "200":
        return {200: {"description": "Success, or a refusal (KEYGATE_REFUSAL_STATUS=200: refusals answer 200 with the APEX error body)",
                      "headers": {"X-Keygate-Status": {"description": "On a refusal only: the 4xx status it stands for",
                                                       "schema": {"type": "string"}}},
                      "content": _any_of(ep.reply, fail_schema, *(["Generic"] if fail_schema != "Generic" else []))}, **faults}
    return {200: {"description": "Success", "content": success}, **refusals, **faults}


def _any_of(*names: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"anyOf": [{"$ref": f"#/components/schemas/{n}"} for n in names]}}}
