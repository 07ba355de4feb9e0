"""APEX reply shapes. Keys are PascalCase on the wire; clients read them case-sensitively."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from keygate.domain.errors import AuthenticationFailed, KeygateError, TooManyRequests
from keygate.domain.users import User


class ApexJSON(JSONResponse):
    """Compact JSON, the way APEX servers write it."""

    def render(self, content: Any) -> bytes:
        import json

        return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()


def generic(result: bool = True, errormsg: str | None = None, errorcode: int = 0, detail: str | None = None, status: int = 200) -> ApexJSON:
    return ApexJSON({"result": result, "errormsg": errormsg, "errorcode": errorcode, "detail": detail}, status_code=status)


def error(exc: KeygateError) -> ApexJSON:
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, TooManyRequests) else None
    if isinstance(exc, AuthenticationFailed):
        body: dict[str, Any] = {"result": False, "errormsg": exc.message, "errorcode": exc.errorcode, "detail": None}
    else:
        body = {"result": False, "errormsg": exc.message, "errorcode": exc.errorcode, "detail": exc.detail}
    return ApexJSON(body, status_code=exc.http_status, headers=headers)


def auth_success(token: str, user: User) -> ApexJSON:
    return ApexJSON(
        {
            "Authenticated": True,
            "SessionToken": token,
            "User": user.apex_view(),
            "Locked": False,
            "Requires2FA": False,
            "EnforceEnable2FA": False,
            "TwoFAType": None,
            "TwoFAToken": None,
            "errormsg": None,
        }
    )


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
