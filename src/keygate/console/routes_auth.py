"""Sign in (password, then TOTP code when enrolled) and sign out."""

from __future__ import annotations

from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from keygate.console.security import (
    CSRF_FIELD,
    DEVICE_COOKIE,
    PENDING_COOKIE,
    PRE_COOKIE,
    PURPOSE_2FA,
    PURPOSE_LOGIN,
    SESSION_COOKIE,
    clear_cookie,
    csrf_ok,
    csrf_token,
    new_secret,
    set_cookie,
)
from keygate.console.web import checked_form, client_ip, field, keygate, optional_user, redirect, render, require_user
from keygate.domain.errors import AuthenticationFailed, InvalidRequest, KeygateError
from keygate.service.auth import Pending2FA

NOTICES = {
    "signed-out": "You have signed out.",
    "expired": "Your session has ended. Sign in again to continue.",
    "code-expired": "The two-factor step took too long. Sign in again.",
}
PRE_COOKIE_SECONDS = 3600
DEVICE_COOKIE_SECONDS = 365 * 86400
MAX_NEXT = 500


def safe_next(value: object) -> str:
    """A console path to return to after sign-in; anything else (another site, odd schemes) is ``/``."""
    if not isinstance(value, str) or not value.startswith("/") or value.startswith("//") or len(value) > MAX_NEXT:
        return "/"
    if any(c in value for c in "\\\r\n\t") or value.startswith(("/login", "/logout")):
        return "/"
    return value


def _keep_device(request: Request, response: Response, device: str | None) -> None:
    """The device cookie: this browser signed in as the user, so guesses made elsewhere do not block it.
    It outlives sign-outs (it is not a session) and is renewed at every sign-in."""
    if device:
        set_cookie(request, response, DEVICE_COOKIE, device, max_age=DEVICE_COOKIE_SECONDS)


def _with_next(path: str, next_path: str) -> str:
    return path if next_path == "/" else f"{path}{'&' if '?' in path else '?'}{urlencode({'next': next_path})}"


def _login_page(request: Request, status: int = 200, error: str = "", username: str = "", next_path: str = "/") -> Response:
    pre = request.cookies.get(PRE_COOKIE) or new_secret()
    response = render(
        request, "login.html", status=status, error=error, username=username, next_path=next_path,
        login_csrf=csrf_token(pre, PURPOSE_LOGIN), notice=NOTICES.get(request.query_params.get("m", ""), ""),
    )
    set_cookie(request, response, PRE_COOKIE, pre, max_age=PRE_COOKIE_SECONDS)
    return response


async def login_form(request: Request) -> Response:
    next_path = safe_next(request.query_params.get("next"))
    if await optional_user(request) is not None:
        return redirect(request, next_path)
    return _login_page(request, next_path=next_path)


async def login(request: Request) -> Response:
    form = await request.form(max_fields=10)
    username, password = field(form, "username").strip(), field(form, "password")
    next_path = safe_next(form.get("next"))
    if not csrf_ok(request.cookies.get(PRE_COOKIE), PURPOSE_LOGIN, form.get(CSRF_FIELD)):
        request.cookies.pop(PRE_COOKIE, None)
        return _login_page(request, 403, "This sign-in page had expired, so it was reloaded. Sign in again.", username,
                           next_path)
    if not username or not password:
        return _login_page(request, 400, "Enter your username and your password.", username, next_path)
    kg = keygate(request)
    try:
        result = await kg.auth.authenticate_password(username, password, client_ip(request), request.cookies.get(DEVICE_COOKIE))
    except AuthenticationFailed as exc:
        message = ("This account is locked. Ask an administrator to unlock it." if exc.locked
                   else "Wrong username or password.")
        return _login_page(request, 401, message, username, next_path)
    except InvalidRequest as exc:
        return _login_page(request, 400, exc.message, username, next_path)
    except KeygateError as exc:
        return _login_page(request, exc.http_status, exc.message, username, next_path)
    if isinstance(result, Pending2FA):
        response = redirect(request, _with_next("/login/code", next_path))
        set_cookie(request, response, PENDING_COOKIE, result.token, max_age=kg.settings.pending_2fa_seconds)
        return response
    response = redirect(request, next_path)
    set_cookie(request, response, SESSION_COOKIE, result.token)
    _keep_device(request, response, result.device)
    clear_cookie(request, response, PRE_COOKIE)
    return response


def _code_page(request: Request, pending: str, status: int = 200, error: str = "", next_path: str = "/") -> Response:
    return render(request, "code.html", status=status, error=error, code_csrf=csrf_token(pending, PURPOSE_2FA),
                  next_path=next_path)


async def code_form(request: Request) -> Response:
    pending = request.cookies.get(PENDING_COOKIE)
    if not pending:
        return redirect(request, "/login?m=code-expired")
    return _code_page(request, pending, next_path=safe_next(request.query_params.get("next")))


async def submit_code(request: Request) -> Response:
    pending = request.cookies.get(PENDING_COOKIE)
    if not pending:
        return redirect(request, "/login?m=code-expired")
    form = await request.form(max_fields=10)
    next_path = safe_next(form.get("next"))
    if not csrf_ok(pending, PURPOSE_2FA, form.get(CSRF_FIELD)):
        return _code_page(request, pending, 403, "This page had expired, so it was reloaded. Enter the current code.",
                          next_path)
    code = field(form, "code").replace(" ", "")
    if not (len(code) == 6 and code.isdigit()):
        return _code_page(request, pending, 400, "Enter the 6-digit code from your authenticator app.", next_path)
    try:
        grant = await keygate(request).auth.complete_2fa(pending, code, client_ip(request), request.cookies.get(DEVICE_COOKIE))
    except AuthenticationFailed as exc:
        if exc.reason.startswith("unknown or expired"):
            response = redirect(request, "/login?m=code-expired")
            clear_cookie(request, response, PENDING_COOKIE)
            return response
        return _code_page(request, pending, 401, "That code is wrong or has expired. Enter the current code.", next_path)
    except KeygateError as exc:
        return _code_page(request, pending, exc.http_status, exc.message, next_path)
    response = redirect(request, next_path)
    set_cookie(request, response, SESSION_COOKIE, grant.token)
    _keep_device(request, response, grant.device)
    clear_cookie(request, response, PENDING_COOKIE)
    clear_cookie(request, response, PRE_COOKIE)
    return response


async def logout(request: Request) -> Response:
    signed = await require_user(request)
    await checked_form(request, signed)
    await keygate(request).auth.logout(signed.principal, client_ip(request))
    response = redirect(request, "/login?m=signed-out")
    clear_cookie(request, response, SESSION_COOKIE)
    return response


ROUTES = [
    Route("/login", login_form, methods=["GET"]),
    Route("/login", login, methods=["POST"]),
    Route("/login/code", code_form, methods=["GET"]),
    Route("/login/code", submit_code, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
]
