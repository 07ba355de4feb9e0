"""The APEX endpoints. Each handler reads the wire, calls one use case, and writes an APEX reply.

The registry enforces what each endpoint declares (``auth``), so the OpenAPI document, built from the
same declarations, cannot say one thing while the endpoint does another:

- ``none``: anyone; ``credentials``: a sign-in endpoint, which reads the credentials itself;
- ``session``: a key session, a signed request or a password session (the handler gets the principal);
- ``password-session``: a password session only (a key gets errorcode 20, 403);
- ``admin``: an administrator's password session.

The use cases in the service check the same rules again: the registry is the adapter's promise, the
service is where the rules live.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from keygate.api import replies
from keygate.api.middleware import CONTEXT_KEY
from keygate.api.wire import (
    basic_auth,
    credential_headers,
    header,
    header_map,
    may_have_body,
    over_websocket,
    read_body,
    read_payload,
    session_token,
)
from keygate.domain.errors import Forbidden, InvalidRequest, KeygateError, NotAuthorized
from keygate.domain.httpsig import RequestParts
from keygate.domain.iprules import IpAllowlist
from keygate.domain.key_material import KeyType, parse_key_type, parse_public_key
from keygate.domain.keys import parse_expiry
from keygate.domain.permissions import Permission, format_permissions, parse_permissions
from keygate.domain.replay import parse_replay_mode
from keygate.domain.usage import MAX_HOURS
from keygate.domain.users import parse_user_id
from keygate.service import Keygate, Principal
from keygate.service.auth import KeyCredentials, Pending2FA, SessionGrant

Handler = Callable[[Request], Awaitable[Response]]
PrivateHandler = Callable[[Request, Principal], Awaitable[Response]]
AUTH_LEVELS = ("none", "credentials", "session", "password-session", "admin")
PRIVATE_LEVELS = ("session", "password-session", "admin")


@dataclass(frozen=True)
class Endpoint:
    name: str
    handler: Handler
    summary: str
    description: str
    auth: str  # one of AUTH_LEVELS
    body: dict[str, Any] | None = None
    reply: str = "Generic"
    query: tuple[tuple[str, str], ...] = field(default_factory=tuple)


ENDPOINTS: dict[str, Endpoint] = {}


def endpoint(name: str, summary: str, description: str = "", *, auth: str, body: dict[str, Any] | None = None,
             reply: str = "Generic", query: tuple[tuple[str, str], ...] = ()) -> Callable[[Any], Any]:
    """Register a handler. A private one (``auth`` in ``PRIVATE_LEVELS``) is written
    ``async def h(request, principal)`` and is reached only once the caller holds that level."""
    if auth not in AUTH_LEVELS:
        raise ValueError(f"unknown auth level {auth!r}")

    def register(fn: Any) -> Any:
        route = _guarded(fn, auth) if auth in PRIVATE_LEVELS else fn
        ENDPOINTS[name] = Endpoint(name, route, summary, description or (fn.__doc__ or "").strip(), auth, body, reply, query)
        return fn

    return register


def _guarded(fn: PrivateHandler, auth: str) -> Handler:
    """The route for a private handler: authenticate, then hold the principal to the declared level."""

    async def route(request: Request) -> Response:
        principal = await authenticate_request(request)
        if auth != "session":
            principal.require_password_session()
        if auth == "admin":
            principal.require_admin()
        return await fn(request, principal)

    # Not functools.wraps: FastAPI reads the signature, and would take ``principal`` for a parameter.
    route.__name__, route.__doc__ = fn.__name__, fn.__doc__
    return route


def _kg(request: Request) -> Keygate:
    return request.scope[CONTEXT_KEY].keygate  # type: ignore[no-any-return]


def _ip(request: Request) -> str | None:
    return request.scope[CONTEXT_KEY].client_address(request)  # type: ignore[no-any-return]


async def _payload(request: Request) -> dict[str, Any]:
    return await read_payload(request, _kg(request).settings.max_body_bytes)


_NO_SIGN_IN_FIELDS = {
    False: "Send the APIKey, Signature, UserId and Nonce headers (or a JSON body with them, or UserName and Password)",
    True: "Send APIKey, Signature, UserId and Nonce in the frame's payload (or UserName and Password)",
}
_NOT_SIGNED_IN = {
    False: "Not Authorized: send the aptoken header, or the APIKey, Signature, UserId and Nonce headers",
    True: "Not Authorized: sign in on this connection first (AuthenticateUser with APIKey, Signature, UserId and "
          "Nonce in the frame's payload)",
}


Target = tuple[str, str, str]  # (method, raw path, raw query) of the request a signature covers


def _signs_v2(request: Request) -> bool:
    """Whether the request carries a Signature v2 (RFC 9421): a ``Signature-Input`` field. WebSocket
    frames have no HTTP request to sign: v2 applies to HTTP requests only."""
    return b"signature-input" in header_map(request) and not over_websocket(request)


def _header_lines(request: Request) -> dict[bytes, list[bytes]]:
    lines: dict[bytes, list[bytes]] = {}
    for name, value in request.scope["headers"]:
        lines.setdefault(name, []).append(value)
    return lines


async def v2_parts(request: Request, target: Target | None = None) -> RequestParts:
    """What a v2 signature covers of ``request`` (or, for forward auth, of the ``target`` it stands for).

    The path is the one the client sent (before keygate gave APEX paths their canonical form); the
    body, when the request has one, is read here (at most ``KEYGATE_MAX_BODY_BYTES``) and stays
    readable by the handler.
    """
    scope = request.scope
    if target is None:
        raw = scope.get("keygate.sent_raw_path") or scope.get("raw_path") or scope["path"].encode()
        target = (request.method, raw.decode("latin-1"), scope.get("query_string", b"").decode("latin-1"))
    headers = {k.decode("latin-1"): [v.decode("latin-1") for v in vs] for k, vs in _header_lines(request).items()}
    has_body = may_have_body(request)
    body: bytes | None = None
    if has_body:
        body = await read_body(request, _kg(request).settings.max_body_bytes)
        request._body = body  # the handler reads it again (Starlette's Request.stream() yields it)
    host = headers.get("host")
    return RequestParts(target[0], target[1], target[2], host[0] if host else None, headers, body, has_body)


async def authenticate_request(request: Request, target: Target | None = None) -> Principal:
    """A private call: ``aptoken``/``APToken``, a Signature v2 (RFC 9421), or the four signed headers
    on the request itself. ``target``: forward auth's original method, path and query."""
    kg, ip = _kg(request), _ip(request)
    token = session_token(request)
    if token:
        return await kg.auth.principal_for_token(token, ip)
    if _signs_v2(request):
        return await kg.http_signatures.principal_for_http_signature(await v2_parts(request, target), ip)
    found = header_map(request)
    principal = kg.auth.principal_for_signature_now(found.get(b"apikey"), found.get(b"signature"), found.get(b"userid"),
                                                    found.get(b"nonce"), ip)
    if principal is not None:  # the happy path (awaitable when its nonce claim waits); anything else below
        return principal if isinstance(principal, Principal) else await principal
    creds = credential_headers(request)
    if creds:
        return await kg.auth.principal_for_signature(KeyCredentials.parse(creds), ip)
    raise NotAuthorized(_NOT_SIGNED_IN[over_websocket(request)])


def _target_user(payload: dict[str, Any], principal: Principal) -> int:
    raw = payload.get("userid")
    return principal.user_id if raw in (None, "") else parse_user_id(raw)


DEVICE_HEADER = "Keygate-Device"


def _device(request: Request) -> str | None:
    """The device token of an earlier password sign-in: the ``Keygate-Device`` header (or ``kg_device`` cookie)."""
    return header(request, "keygate-device") or request.cookies.get("kg_device")


def _with_device(response: Response, grant: SessionGrant) -> Response:
    if grant.device:
        response.headers[DEVICE_HEADER] = grant.device
    return response


def _render_grant(result: SessionGrant | Pending2FA, web: bool = False) -> Response:
    if isinstance(result, Pending2FA):
        return replies.auth_pending_2fa(result.token)
    return _with_device(replies.auth_success(result.token, result.user, user_id_field=web), result)


async def _sign_in(request: Request, allow_resume: bool = False) -> Response:
    """A sign-in; ``allow_resume`` (``WebAuthenticateUser``) also resumes a session by ``SessionToken``
    and answers APEX's top-level ``UserId`` string."""
    kg, ip = _kg(request), _ip(request)
    try:
        if _signs_v2(request):
            return _render_grant(await kg.http_signatures.authenticate_http_signature(await v2_parts(request), ip), allow_resume)
        found = header_map(request)
        grant = await kg.auth.authenticate_key_now(found.get(b"apikey"), found.get(b"signature"), found.get(b"userid"),
                                                   found.get(b"nonce"), ip)
        if grant is not None:  # the happy path, decided at once; anything else below, the whole way
            return _render_grant(grant, allow_resume)
        creds = credential_headers(request)
        if creds:
            return _render_grant(await kg.auth.authenticate_key(KeyCredentials.parse(creds), ip), allow_resume)
        payload = await _payload(request)
        if any(k in payload for k in ("apikey", "signature", "nonce")):
            return _render_grant(await kg.auth.authenticate_key(KeyCredentials.parse(payload), ip), allow_resume)
        if "username" in payload or "password" in payload:
            return _render_grant(await kg.auth.authenticate_password(payload.get("username"), payload.get("password"), ip,
                                                                     _device(request)), allow_resume)
        if allow_resume and payload.get("sessiontoken"):
            token = payload["sessiontoken"]
            if not isinstance(token, str):
                raise InvalidRequest("SessionToken must be a string")
            return _render_grant(await kg.auth.resume(token, ip), allow_resume)
        basic = basic_auth(request)
        if basic:
            return _render_grant(await kg.auth.authenticate_password(basic[0], basic[1], ip, _device(request)), allow_resume)
        raise InvalidRequest(_NO_SIGN_IN_FIELDS[over_websocket(request)])
    except KeygateError as exc:
        return replies.auth_failure(exc)


# ----- public ---------------------------------------------------------------------------------

@endpoint("Ping", "Liveness check", "Answers `{\"msg\": \"PONG\"}`; needs no authentication.", auth="none", reply="Pong")
async def ping(request: Request) -> Response:
    return replies.ApexJSON({"msg": "PONG"})


_KEY_BODY = {"APIKey": "string", "Signature": "string", "UserId": "integer|string", "Nonce": "string", "UserName": "string", "Password": "string"}


@endpoint(
    "AuthenticateUser", "Sign in with an API key signature (or username and password)",
    "Send the headers `APIKey`, `Signature`, `UserId`, `Nonce` (or the same fields as a JSON body), where "
    "`Signature = hex(HMAC-SHA256(key=APISecret, msg=Nonce + UserId + APIKey))`; for an `ed25519` key, the "
    "Ed25519 signature of the same message in base64 (standard or URL-safe, padding optional) or 128 hex digits. A password login "
    "(`UserName`, `Password`) of a user with two-factor sign-in answers `Requires2FA` and a `Pending2FaToken`. "
    "The reply's `SessionToken` goes in the `aptoken` header of later calls. Every failure of a key, user or "
    "signature answers the same message.",
    auth="credentials", body=_KEY_BODY, reply="Authenticated",
)
async def authenticate_user(request: Request) -> Response:
    return await _sign_in(request)


@endpoint(
    "Authenticate", "Sign in: API key headers, or `Authorization: Basic` username and password",
    "Accepts everything `AuthenticateUser` does, plus HTTP Basic credentials (the form the ccxt `ndax` client uses).",
    auth="credentials", body=_KEY_BODY, reply="Authenticated",
)
async def authenticate(request: Request) -> Response:
    return await _sign_in(request)


@endpoint(
    "WebAuthenticateUser", "Sign in with username and password, or resume a session by `SessionToken`",
    auth="credentials", body={"UserName": "string", "Password": "string", "SessionToken": "string"}, reply="WebAuthenticated",
)
async def web_authenticate_user(request: Request) -> Response:
    return await _sign_in(request, allow_resume=True)


@endpoint(
    "Authenticate2FA", "Complete a two-factor sign-in with the current TOTP code",
    "Send the `Pending2FaToken` from the password sign-in as a header (or in the body) and `Code` as a query "
    "parameter or in the JSON body. Codes are standard TOTP: SHA-1, 30 seconds, 6 digits.",
    auth="credentials", body={"Code": "string", "Pending2FaToken": "string"}, reply="Authenticated2FA",
    query=(("Code", "The 6-digit TOTP code"),),
)
async def authenticate_2fa(request: Request) -> Response:
    kg, ip = _kg(request), _ip(request)
    try:
        payload = await _payload(request)
        pending = header(request, "pending2fatoken") or payload.get("pending2fatoken")
        grant = await kg.auth.complete_2fa(pending, payload.get("code"), ip, _device(request))
    except KeygateError as exc:
        return replies.auth_failure(exc)
    return _with_device(replies.ApexJSON({"Authenticated": True, "UserId": grant.user.user_id, "SessionToken": grant.token,
                                          "errormsg": None}), grant)


# ----- private --------------------------------------------------------------------------------

@endpoint("LogOut", "End the session whose token is sent", auth="session")
async def log_out(request: Request, principal: Principal) -> Response:
    await _kg(request).auth.logout(principal, _ip(request))
    return replies.generic()


@endpoint("GetUserInfo", "The signed-in user (an administrator may name another `UserId`)", auth="session",
          body={"UserId": "integer|string"}, reply="User", query=(("UserId", "Optional; defaults to the caller"),))
async def get_user_info(request: Request, principal: Principal) -> Response:
    kg = _kg(request)
    payload = await read_payload(request, kg.settings.max_body_bytes)
    return replies.user_info(await kg.users.read(principal, _target_user(payload, principal)))


@endpoint("GetUserPermissions", "The permissions of this session: a key session has exactly its key's",
          auth="session", body={"UserId": "integer|string"}, reply="StringList")
async def get_user_permissions(request: Request, principal: Principal) -> Response:
    payload = await _payload(request)
    if _target_user(payload, principal) != principal.user_id:
        raise Forbidden("Not Authorized: you may only read your own permissions")
    return replies.ApexJSON(format_permissions(principal.permissions))


@endpoint("GetUserAccounts", "The account ids of the user, e.g. `[449]`", auth="session",
          body={"UserId": "integer|string"}, reply="IntegerList")
async def get_user_accounts(request: Request, principal: Principal) -> Response:
    payload = await _payload(request)
    user_id = _target_user(payload, principal)
    principal.require_self_or_admin(user_id, "read your own accounts")
    user = await _kg(request).users.read(principal, user_id)
    return replies.ApexJSON([user.account_id])


_KEY_EDIT_BODY = {"UserId": "integer|string", "Permissions": "array", "IpAllowlist": "array", "Label": "string",
                  "ReplayMode": "string", "ExpiresAt": "string", "RequiresSignatureV2": "boolean"}
_KEY_CREATE_BODY = {**_KEY_EDIT_BODY, "KeyType": "string", "PublicKey": "string"}


def _public_key_field(payload: dict[str, Any]) -> bytes | None:
    """``PublicKey`` (an Ed25519 public key, see domain.key_material.parse_public_key), or None if absent."""
    if "publickey" not in payload:
        return None
    value = payload["publickey"]
    if not isinstance(value, str):  # null included: the field is a string when it is sent at all
        raise InvalidRequest("PublicKey must be a string: the Ed25519 public key (base64, base64url, hex or PEM)")
    return None if value == "" else parse_public_key(value)


def _key_type_field(payload: dict[str, Any]) -> KeyType:
    if "keytype" in payload and not isinstance(payload["keytype"], str):
        raise InvalidRequest('KeyType must be "hmac" or "ed25519"')
    return parse_key_type(payload.get("keytype"))


def _requires_v2(payload: dict[str, Any]) -> bool | None:
    value = payload.get("requiressignaturev2")
    if value is None or isinstance(value, bool):
        return value
    raise InvalidRequest("RequiresSignatureV2 must be true or false")


def _api_key_field(payload: dict[str, Any], action: str) -> str:
    api_key = payload.get("apikey")
    if not isinstance(api_key, str) or not api_key:
        raise InvalidRequest(f"Missing APIKey: name the key to {action}")
    return api_key


def _allowlist(payload: dict[str, Any]) -> IpAllowlist | None:
    for name in ("ipallowlist", "ipaddresses"):
        if payload.get(name) is not None:  # null means "not given", never "allow any IP"
            return IpAllowlist.parse(payload[name])
    return None


@endpoint(
    "AddUserAPIKey", "Create an API key; the reply is the only time the secret is shown",
    "Needs a password session (a session made from an API key gets errorcode 20). `Permissions` is a list of "
    "`Trading`, `Withdraw`, `Deposit` (none: read only); `IpAllowlist` holds IPv4/IPv6 addresses and CIDR ranges "
    "(empty: any IP). `KeyType` is `hmac` (the default: keygate makes the secret and shows it in this reply "
    "only) or `ed25519`: then `PublicKey` is required (the 32 raw bytes in base64, base64url or hex, or a PEM "
    "`PUBLIC KEY`), keygate keeps only that, and the reply has no `APISecret`.",
    auth="password-session", body=_KEY_CREATE_BODY, reply="CreatedKey",
)
async def add_user_api_key(request: Request, principal: Principal) -> Response:
    payload = await _payload(request)
    created = await _kg(request).keys.create(
        principal,
        _target_user(payload, principal),
        parse_permissions(payload.get("permissions")),
        _allowlist(payload) or IpAllowlist(),
        payload.get("label"),  # null: no label; any other non-string is refused
        replay_mode=parse_replay_mode(payload["replaymode"]) if payload.get("replaymode") is not None else None,
        expires_at=parse_expiry(payload.get("expiresat")),
        key_type=_key_type_field(payload),
        public_key=_public_key_field(payload),
        requires_v2=_requires_v2(payload),
    )
    return replies.ApexJSON(created.reveal(), headers={"Cache-Control": "no-store"})


@endpoint("GetUserAPIKeys", "List a user's API keys (never the secret)", auth="session",
          body={"UserId": "integer|string"}, reply="KeyList")
async def get_user_api_keys(request: Request, principal: Principal) -> Response:
    payload = await _payload(request)
    keys = await _kg(request).keys.list(principal, _target_user(payload, principal))
    return replies.ApexJSON([k.public_view() for k in keys])


@endpoint(
    "GetUserAPIKeyUsage", "A key's requests and refusals per hour over the last 7 days, and its last use",
    "`Hours` (default and at most 168) hour buckets, oldest first, each `{Hour, Requests, Refusals}`; hours without a "
    "request are there with zeros. `Requests` counts accepted calls (signed calls, key sign-ins, key-session calls); "
    "`Refusals` counts refused ones that named the key (wrong signature, address not allowed, replayed nonce, ...). "
    "`LastUsedAt` and `LastUsedIp` are the time and client address of the last accepted call. Counts reach it "
    "within a second. A key (its session or a signed request) may read only its own usage; a person their own keys'; "
    "an administrator any key's. Another user's key answers 404, as for a key that does not exist.",
    auth="session", body={"APIKey": "string", "UserId": "integer|string", "Hours": "integer|string"}, reply="KeyUsage",
    query=(("APIKey", "The key"), ("UserId", "Optional: the key's owner"), ("Hours", "Optional, 1 to 168 (default)")),
)
async def get_user_api_key_usage(request: Request, principal: Principal) -> Response:
    payload = await _payload(request)
    api_key = _api_key_field(payload, "read the usage of")
    raw_user = payload.get("userid")
    hours = payload.get("hours", MAX_HOURS)
    if isinstance(hours, str) and hours.strip().isdigit():
        hours = int(hours.strip())
    usage = await _kg(request).keys.usage(principal, api_key, None if raw_user in (None, "") else parse_user_id(raw_user), hours)
    return replies.ApexJSON(usage.as_dict())


@endpoint(
    "UpdateUserAPIKey", "Edit a key's permissions, IP allowlist or label (keygate's addition to APEX)",
    "Fields left out keep their value. The key's live sessions and signed requests take the new permissions and "
    "allowlist at once, on every server. The key and its secret stay the same.",
    auth="password-session", body={**_KEY_EDIT_BODY, "APIKey": "string"}, reply="Key",
)
async def update_user_api_key(request: Request, principal: Principal) -> Response:
    payload = await _payload(request)
    api_key = _api_key_field(payload, "edit")
    perms = parse_permissions(payload["permissions"]) if payload.get("permissions") is not None else None
    label = payload.get("label")
    if label is not None and not isinstance(label, str):
        raise InvalidRequest("Label must be a string")
    key = await _kg(request).keys.update(
        principal, _target_user(payload, principal), api_key, permissions=perms, ip_allowlist=_allowlist(payload), label=label,
        replay_mode=parse_replay_mode(payload["replaymode"]) if payload.get("replaymode") is not None else None,
        expires_at=parse_expiry(payload["expiresat"]) if "expiresat" in payload else False,
        requires_v2=_requires_v2(payload),
    )
    return replies.ApexJSON(key.public_view())


def _one_permission(payload: dict[str, Any], action: str) -> frozenset[Permission]:
    """``Permission`` (one name), or ``Permissions`` (a list, or names separated by commas)."""
    single = payload.get("permission")
    if single is not None:
        if not isinstance(single, str):
            raise InvalidRequest("Permission must be one name: Trading, Withdraw or Deposit")
        found = parse_permissions([single])
    else:
        found = parse_permissions(payload.get("permissions"))
    if not found:
        raise InvalidRequest(f"Missing Permission: name the permission to {action} (Trading, Withdraw or Deposit)")
    return found


_KEY_PERMISSION_BODY = {"UserId": "integer|string", "APIKey": "string", "Permission": "string", "Permissions": "array"}


async def _change_permission(request: Request, principal: Principal, grant: bool) -> Response:
    payload = await _payload(request)
    api_key = _api_key_field(payload, "change")
    permissions = _one_permission(payload, "add" if grant else "remove")
    key = await _kg(request).keys.change_permissions(
        principal, _target_user(payload, principal), api_key, permissions, grant=grant)
    return replies.ApexJSON(key.public_view())


@endpoint(
    "AddUserAPIKeyPermission", "Give a key one more permission, keeping the others",
    "`Permission` names one of `Trading`, `Withdraw`, `Deposit` (or `Permissions`, a list). The same rules as "
    "`UpdateUserAPIKey`: a password session of the key's owner or an administrator; the key's live sessions "
    "have the new permission at once; adding a permission the key holds changes nothing.",
    auth="password-session", body=_KEY_PERMISSION_BODY, reply="Key",
)
async def add_user_api_key_permission(request: Request, principal: Principal) -> Response:
    return await _change_permission(request, principal, grant=True)


@endpoint(
    "RemoveUserAPIKeyPermission", "Take one permission from a key, keeping the others",
    "`Permission` names one of `Trading`, `Withdraw`, `Deposit` (or `Permissions`, a list). The same rules as "
    "`UpdateUserAPIKey`: a password session of the key's owner or an administrator; the key's live sessions "
    "lose the permission at once, on every server; removing a permission the key lacks changes nothing.",
    auth="password-session", body=_KEY_PERMISSION_BODY, reply="Key",
)
async def remove_user_api_key_permission(request: Request, principal: Principal) -> Response:
    return await _change_permission(request, principal, grant=False)


@endpoint("GetAvailablePermissionList", "Every permission a key can carry, sorted by name",
          "As in APEX, an alphabetically sorted array of names: `[\"Deposit\",\"Trading\",\"Withdraw\"]`. "
          "A key with none of them can still read.", auth="session", reply="PermissionList")
async def get_available_permission_list(request: Request, principal: Principal) -> Response:
    return replies.ApexJSON(AVAILABLE_PERMISSIONS)


AVAILABLE_PERMISSIONS = sorted(p.value for p in Permission)


@endpoint("RemoveUserAPIKey", "Delete a key; it and every session made with it stop working at once",
          auth="password-session", body={"UserId": "integer|string", "APIKey": "string"})
async def remove_user_api_key(request: Request, principal: Principal) -> Response:
    payload = await _payload(request)
    api_key = _api_key_field(payload, "delete")
    await _kg(request).keys.delete(principal, _target_user(payload, principal), api_key)
    return replies.generic()


@endpoint("EnableGoogle2FA", "Start TOTP enrolment: answers the secret (`ManualCode`) and an otpauth URI",
          "Two-factor sign-in is active only after `ConfirmGoogle2FA` with a current code. Replacing an enrolled "
          "seed needs `Code`, a current code of the enrolled seed.", auth="password-session", reply="Enable2FA",
          body={"Code": "string"})
async def enable_2fa(request: Request, principal: Principal) -> Response:
    payload = await _payload(request)
    code = payload.get("code")
    if "code" in payload and not isinstance(code, str):
        raise InvalidRequest("Code must be the current 6-digit code, as a string")
    secret, uri = await _kg(request).users.begin_totp(principal, principal.user_id, code)
    return replies.ApexJSON({"ManualCode": secret, "ProvisioningUri": uri, "result": True, "errormsg": None}, headers={"Cache-Control": "no-store"})


@endpoint("ConfirmGoogle2FA", "Finish TOTP enrolment with a current code", auth="password-session", body={"Code": "string"})
async def confirm_2fa(request: Request, principal: Principal) -> Response:
    payload = await _payload(request)
    await _kg(request).users.confirm_totp(principal, principal.user_id, payload.get("code"))
    return replies.generic()


@endpoint("DisableGoogle2FA", "Remove TOTP sign-in; needs a current code", auth="password-session", body={"Code": "string"})
async def disable_2fa(request: Request, principal: Principal) -> Response:
    payload = await _payload(request)
    await _kg(request).users.disable_totp(principal, principal.user_id, payload.get("code"))
    return replies.generic()


@endpoint(
    "RotateUserAPIKey", "Issue a new secret and nonce for a key; shown once, like creation",
    "`GraceSeconds` (default 0, at most 30 days) keeps the old secret working that long, so clients can switch "
    "without downtime; with 0 the old secret and the key's sessions stop at once. An `ed25519` key takes its new "
    "`PublicKey` instead (required; the old public key is the one kept for the grace), and the reply has no secret.",
    auth="password-session",
    body={"UserId": "integer|string", "APIKey": "string", "GraceSeconds": "integer|string", "PublicKey": "string"}, reply="CreatedKey",
)
async def rotate_user_api_key(request: Request, principal: Principal) -> Response:
    payload = await _payload(request)
    api_key = _api_key_field(payload, "rotate")
    grace = payload.get("graceseconds", 0)
    if isinstance(grace, str) and grace.strip().isdigit():
        grace = int(grace.strip())
    created = await _kg(request).keys.rotate_secret(principal, _target_user(payload, principal), api_key, grace,
                                                    public_key=_public_key_field(payload))
    return replies.ApexJSON(created.reveal(), headers={"Cache-Control": "no-store"})


_AUDIT_QUERY = (
    ("Action", "e.g. auth.key, auth.password, key.create, user.lockout"), ("Outcome", "success, failure, locked, pending-2fa"),
    ("UserId", "events about or by this user"), ("APIKey", "events about this key"),
    ("Since", "ISO 8601 date-time"), ("Until", "ISO 8601 date-time"), ("Limit", "at most 1000, default 100"),
)


@endpoint(
    "GetAuditLog", "The audit trail, newest first (administrators only)",
    "Every authentication (with the precise internal reason, which clients never see), key and user change, "
    "lockout and unlock. Secrets and session tokens never appear in it.",
    auth="admin", body={name: "string" for name, _ in _AUDIT_QUERY}, reply="AuditList", query=_AUDIT_QUERY,
)
async def get_audit_log(request: Request, principal: Principal) -> Response:
    payload = await _payload(request)
    events = await _kg(request).audit.query(principal, **audit_filters(payload))
    return replies.ApexJSON([e.as_dict() for e in events])


def audit_filters(payload: dict[str, Any]) -> dict[str, Any]:
    """Read the audit filters of a request; each one is checked and explained when wrong."""
    filters: dict[str, Any] = {}
    for name in ("action", "outcome", "apikey"):
        value = payload.get(name)
        if value not in (None, ""):
            if not isinstance(value, str) or len(value) > 64:
                raise InvalidRequest(f"{name} must be a short string")
            filters["api_key" if name == "apikey" else name] = value
    if payload.get("userid") not in (None, ""):
        filters["user_id"] = parse_user_id(payload["userid"])
    for name in ("since", "until"):
        if payload.get(name) not in (None, ""):
            try:
                filters[name] = parse_expiry(payload[name])
            except InvalidRequest:
                raise InvalidRequest(f"{name.capitalize()} must be an ISO 8601 date-time such as 2026-01-31T00:00:00Z") from None
    limit = payload.get("limit", 100)
    if isinstance(limit, str) and limit.strip().isdigit():
        limit = int(limit.strip())
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 1000:
        raise InvalidRequest("Limit must be an integer from 1 to 1000")
    filters["limit"] = limit
    return filters


async def _named_user(request: Request, action: str) -> int:
    """The ``UserId`` an administrator's call acts on (it must be given)."""
    payload = await _payload(request)
    if payload.get("userid") in (None, ""):
        raise InvalidRequest(f"Missing UserId: name the user to {action}")
    return parse_user_id(payload["userid"])


@endpoint("UnlockUser", "Unlock a user locked by an administrator or by too many failures (administrators only)",
          auth="admin", body={"UserId": "integer|string"})
async def unlock_user(request: Request, principal: Principal) -> Response:
    await _kg(request).users.set_locked(principal, await _named_user(request, "unlock"), False)
    return replies.generic()


@endpoint("LockUser", "Lock a user until an administrator unlocks them; ends their sessions (administrators only)",
          auth="admin", body={"UserId": "integer|string"})
async def lock_user(request: Request, principal: Principal) -> Response:
    await _kg(request).users.set_locked(principal, await _named_user(request, "lock"), True, reason="administrator")
    return replies.generic()
