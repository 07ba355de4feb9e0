"""APEX reply shapes. Keys are PascalCase on the wire; clients read them case-sensitively."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import JSONResponse, Response

from keygate.domain.errors import AuthenticationFailed, KeygateError, TooManyRequests
from keygate.domain.users import User
from keygate.service.clock import utcnow

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def encode(content: Any) -> bytes:
    """Compact JSON (no spaces), the one serialisation of every reply and WebSocket frame."""
    return _ENCODER.encode(content).encode()


class ApexJSON(JSONResponse):
    """Compact JSON, the way APEX servers write it."""

    def render(self, content: Any) -> bytes:
        return _ENCODER.encode(content).encode()


class StoredReply(Response):
    """A 200 JSON reply whose body and headers were rendered before (see ``user_info``)."""

    def __init__(self, body: bytes, raw_headers: list[tuple[bytes, bytes]]) -> None:
        self.status_code = 200
        self.background = None
        self.body = body
        self.raw_headers = list(raw_headers)  # a copy: middleware may add headers to a reply


_USER_BODIES: dict[int, tuple[User, bool, bytes, list[tuple[bytes, bytes]]]] = {}
_USER_BODIES_MAX = 1024


def user_info(user: User) -> Response:
    """The ``GetUserInfo`` reply. Its body depends only on the (immutable) ``User`` and on whether
    the user is locked now, and the user cache hands out one object until the user changes, so the
    reply is kept per object: an entry holds its object, whose identity therefore cannot be reused
    while the entry lives. A lock after failures ends by itself, with the same object: the entry
    remembers the lock state it was rendered with and is rendered again once that state changes."""
    entry = _user_entry(user)
    return StoredReply(entry[2], entry[3])


def _user_body(user: User) -> bytes:
    return _user_entry(user)[2]


def _user_entry(user: User) -> tuple[User, bool, bytes, list[tuple[bytes, bytes]]]:
    now = utcnow() if user.locked else None  # the clock is read only for a locked user
    locked = now is not None and user.is_locked(now)
    entry = _USER_BODIES.get(id(user))
    if entry is None or entry[0] is not user or entry[1] is not locked:
        if len(_USER_BODIES) >= _USER_BODIES_MAX:
            _USER_BODIES.clear()
        body = _ENCODER.encode(user.apex_view(now or utcnow())).encode()
        rendered = Response(body, media_type=ApexJSON.media_type)
        entry = _USER_BODIES[id(user)] = (user, locked, body, rendered.raw_headers)
    return entry


def generic(result: bool = True, errormsg: str | None = None, errorcode: int = 0, detail: str | None = None, status: int = 200) -> ApexJSON:
    return ApexJSON({"result": result, "errormsg": errormsg, "errorcode": errorcode, "detail": detail}, status_code=status)


def error(exc: KeygateError) -> ApexJSON:
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, TooManyRequests) else None
    if isinstance(exc, AuthenticationFailed):
        body: dict[str, Any] = {"result": False, "errormsg": exc.message, "errorcode": exc.errorcode, "detail": None}
    else:
        body = {"result": False, "errormsg": exc.message, "errorcode": exc.errorcode, "detail": exc.detail}
    return ApexJSON(body, status_code=exc.http_status, headers=headers)


_AUTH_SUCCESS_TAIL = b',"Locked":false,"Requires2FA":false,"EnforceEnable2FA":false,"TwoFAType":null,"TwoFAToken":null,"errormsg":null}'


def auth_success(token: str, user: User, user_id_field: bool = False) -> Response:
    """``{"Authenticated": true, "SessionToken", "User", "Locked": false, ...}``, assembled around the
    user's remembered body (see ``user_info``); byte for byte what encoding the whole dict gives.

    ``user_id_field`` adds APEX's top-level ``"UserId": "<id>"`` (a string), which
    ``WebAuthenticateUser`` replies carry."""
    user_id = b',"UserId":"%d"' % user.user_id if user_id_field else b""
    body = b"".join((b'{"Authenticated":true,"SessionToken":', _ENCODER.encode(token).encode(), user_id, b',"User":',
                     _user_body(user), _AUTH_SUCCESS_TAIL))
    return Response(body, media_type=ApexJSON.media_type)


def auth_pending_2fa(token: str) -> ApexJSON:
    return ApexJSON(
        {"Authenticated": True, "Requires2FA": True, "AuthType": "Google", "AddtlInfo": "", "Pending2FaToken": token, "Locked": False, "errormsg": None}
    )


def auth_failure(exc: KeygateError) -> ApexJSON:
    locked = bool(getattr(exc, "locked", False))
    message = "User account is locked; contact an administrator" if locked else exc.message
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, TooManyRequests) else None
    return ApexJSON(
        {"Authenticated": False, "Locked": locked, "errormsg": message, "errorcode": exc.errorcode},
        status_code=exc.http_status,
        headers=headers,
    )
