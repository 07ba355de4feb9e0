"""Request plumbing shared by the console pages: who is signed in, forms with CSRF checks, rendering."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.templating import Jinja2Templates

from keygate.console.security import CSRF_FIELD, PURPOSE_SESSION, SESSION_COOKIE, csrf_ok, csrf_token
from keygate.domain.errors import NotAuthorized
from keygate.domain.sessions import SessionKind, session_label
from keygate.domain.users import User
from keygate.service import Keygate, Principal

MOUNT = "/console"
TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
MAX_FORM_FIELDS = 200


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else ""


TEMPLATES.env.filters["when"] = _when
TEMPLATES.env.filters["session_label"] = session_label


class PageError(Exception):
    """Stop handling and show a page with this status, title and message."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message


class SignInRequired(Exception):
    """No live console session: GETs go to the sign-in page, POSTs get an explanatory page."""


@dataclass(frozen=True)
class Signed:
    principal: Principal
    token: str

    @property
    def csrf(self) -> str:
        return csrf_token(self.token, PURPOSE_SESSION)

    @property
    def user(self) -> User:
        """The signed-in user (a console session is always a user's: the operator has none)."""
        user = self.principal.user
        if user is None:
            raise NotAuthorized("Not Authorized: sign in")
        return user


def keygate(request: Request) -> Keygate:
    return request.app.state.parent.state.keygate  # type: ignore[no-any-return]


def client_ip(request: Request) -> str | None:
    return request.app.state.parent.state.client_address(request)  # type: ignore[no-any-return]


def base(request: Request) -> str:
    return request.scope.get("root_path", "") or ""


async def optional_user(request: Request) -> Signed | None:
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    try:
        principal = await keygate(request).auth.principal_for_token(token, client_ip(request))
    except NotAuthorized:
        return None  # expired, ended, locked user or another address: sign in again
    if principal.via is not SessionKind.PASSWORD:
        return None  # a key session is for the API only; the console needs a person
    return Signed(principal, token)


async def require_user(request: Request) -> Signed:
    signed = await optional_user(request)
    if signed is None:
        raise SignInRequired()
    return signed


async def require_admin(request: Request) -> Signed:
    signed = await require_user(request)
    if not signed.principal.is_admin:
        raise PageError(403, "Administrators only",
                        "This page is for administrators. Your account does not have administrator rights.")
    return signed


async def checked_form(request: Request, signed: Signed) -> FormData:
    """The posted form, once its CSRF token matches this session."""
    form = await request.form(max_fields=MAX_FORM_FIELDS)
    if not csrf_ok(signed.token, PURPOSE_SESSION, form.get(CSRF_FIELD)):
        raise csrf_failure()
    return form


def csrf_failure() -> PageError:
    return PageError(
        403, "This form has expired",
        "The form could not be verified: its security token is missing or does not match your current "
        "sign-in. This happens when a page stayed open from an earlier sign-in, or when another site tried "
        "to submit it. Nothing was changed. Reload the page and try again.",
    )


def render(request: Request, template: str, signed: Signed | None = None, status: int = 200, **context: Any) -> HTMLResponse:
    principal = signed.principal if signed else None
    ctx = {
        "base": base(request),
        "user": principal.user if principal else None,
        "is_admin": bool(principal and principal.is_admin),
        "csrf": signed.csrf if signed else "",
        "csrf_field": CSRF_FIELD,
        "now": datetime.now(timezone.utc),
        **context,
    }
    return TEMPLATES.TemplateResponse(request, template, ctx, status_code=status)


def redirect(request: Request, path: str) -> Response:
    return RedirectResponse(base(request) + path, status_code=303)


def field(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""
