"""Operator pages (administrators only): users, every user's keys, active sessions, the audit trail."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any, NamedTuple
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from keygate.console.routes_keys import DUPLICATE, form_once, render_usage
from keygate.console.security import FORM_ID_FIELD, FormOnce
from keygate.console.web import PageError, Signed, checked_form, field, keygate, render, require_admin
from keygate.domain.errors import InvalidRequest, KeygateError, NotFound
from keygate.domain.paging import DEFAULT_PAGE_SIZE, MAX_PAGE, MAX_SEARCH, Page
from keygate.domain.permissions import format_permissions
from keygate.domain.sessions import session_label
from keygate.domain.users import User
from keygate.service.users import generate_password

AUDIT_ACTIONS = [
    "auth.password", "auth.2fa", "auth.key", "auth.signed_request", "auth.logout", "key.create", "key.update",
    "key.delete", "key.rotate", "user.create", "user.password", "user.lock", "user.unlock", "user.lockout", "user.signout",
    "user.2fa.enable", "user.2fa.disable", "session.end",
]
AUDIT_OUTCOMES = ["success", "failure", "pending-2fa"]
MAX_AUDIT_ROWS = 1000


class Listing(NamedTuple):
    """Where an operator is in a listing: ``?q=<search>&page=<n>`` (50 rows a page)."""

    q: str
    page: int

    @staticmethod
    def of(request: Request) -> Listing:
        """Read from the query string; a page that is not a number is the first, a search is cut short."""
        raw = (request.query_params.get("page") or "").strip()
        page = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 7 else 1
        return Listing((request.query_params.get("q") or "").strip()[:MAX_SEARCH], min(max(page, 1), MAX_PAGE))

    def query(self, page: int | None = None) -> str:
        """The query string of this listing (or of another page of it): ``?q=..&page=..``, or ""."""
        params = {k: v for k, v in (("q", self.q), ("page", page or self.page)) if v and v != 1}
        return "?" + urlencode(params) if params else ""


def _paging(listing: Listing, found: Page[Any]) -> dict[str, Any]:
    return {"listing": listing, "page": found, "keep": listing.query(),
            "previous": listing.query(found.page - 1) if found.has_previous else None,
            "next": listing.query(found.page + 1) if found.has_next else None}


async def _names(request: Request, signed: Signed, user_ids: Iterable[int | None]) -> dict[int, str]:
    """Usernames of the users on one page of rows (one query for the ids on the page, not every user)."""
    return await keygate(request).users.names(signed.principal, (i for i in user_ids if i))


async def _users_page(request: Request, signed: Signed, status: int = 200, notice: str = "", error: str = "",
                      revealed: dict[str, str] | None = None, new_user: dict[str, str] | None = None) -> Response:
    listing = Listing.of(request)
    found = await keygate(request).users.page(signed.principal, listing.q, listing.page, DEFAULT_PAGE_SIZE)
    response = render(request, "admin_users.html", signed, status=status, users=found.items, notice=notice, error=error,
                      revealed=revealed, new_user=new_user or {}, form_id=FormOnce.new_id(), **_paging(listing, found))
    if revealed:
        response.headers["cache-control"] = "no-store"
    return response


async def users(request: Request) -> Response:
    signed = await require_admin(request)
    return await _users_page(request, signed)


async def create_user(request: Request) -> Response:
    signed = await require_admin(request)
    form = await checked_form(request, signed)
    username, email = field(form, "username").strip(), field(form, "email").strip()
    password = field(form, "password")
    typed = {"username": username, "email": email, "admin": "yes" if form.get("admin") else ""}
    if not form_once(request).claim(signed.token, form.get(FORM_ID_FIELD)):
        raise DUPLICATE
    generated = not password
    password = password or generate_password()
    try:
        user = await keygate(request).users.create(signed.principal, username, password, email, is_admin=bool(form.get("admin")))
    except KeygateError as exc:
        return await _users_page(request, signed, status=exc.http_status, error=exc.message, new_user=typed)
    revealed = {"username": user.username, "password": password} if generated else None
    return await _users_page(request, signed, status=201, notice=f"User {user.username} (id {user.user_id}) was created.",
                             revealed=revealed)


def _user_id(request: Request) -> int:
    raw = request.path_params["user_id"]
    if not raw.isdigit() or len(raw) > 18:
        raise PageError(404, "User not found", "There is no such user.")
    return int(raw)


async def _target(request: Request) -> User:
    user = await keygate(request).users.get(_user_id(request))
    if user is None:
        raise PageError(404, "User not found", "There is no such user.")
    return user


async def set_locked(request: Request) -> Response:
    signed = await require_admin(request)
    form = await checked_form(request, signed)
    user = await _target(request)
    lock = field(form, "action") == "lock"
    try:
        await keygate(request).users.set_locked(signed.principal, user.user_id, lock, reason="console")
    except InvalidRequest:
        return await _users_page(request, signed, 400, error="You cannot lock your own account.")
    what = "locked: their sessions ended and they cannot sign in" if lock else "unlocked"
    return await _users_page(request, signed, notice=f"User {user.username} is {what}.")


async def reset_password(request: Request) -> Response:
    signed = await require_admin(request)
    form = await checked_form(request, signed)
    user = await _target(request)
    if not form_once(request).claim(signed.token, form.get(FORM_ID_FIELD)):
        raise DUPLICATE
    password = generate_password()
    await keygate(request).users.set_password(signed.principal, user.user_id, password)
    return await _users_page(request, signed, notice=f"The password of {user.username} was reset and their sessions ended.",
                             revealed={"username": user.username, "password": password})


async def sign_out_user(request: Request) -> Response:
    signed = await require_admin(request)
    await checked_form(request, signed)
    user = await _target(request)
    ended = await keygate(request).users.sign_out_everywhere(signed.principal, user.user_id)
    return await _users_page(request, signed, notice=f"{user.username} was signed out everywhere ({ended} sessions ended).")


async def all_keys(request: Request, notice: str = "") -> Response:
    signed = await require_admin(request)
    listing = Listing.of(request)
    found = await keygate(request).keys.page(signed.principal, listing.q, listing.page, DEFAULT_PAGE_SIZE)
    names = await _names(request, signed, (k.user_id for k in found.items))
    return render(request, "admin_keys.html", signed, keys=found.items, users=names, notice=notice,
                  format_permissions=format_permissions, **_paging(listing, found))


async def revoke_key(request: Request) -> Response:
    signed = await require_admin(request)
    form = await checked_form(request, signed)
    api_key = request.path_params["api_key"]
    try:
        owner = int(field(form, "user_id"))
        await keygate(request).keys.delete(signed.principal, owner, api_key)
    except (ValueError, NotFound):
        raise PageError(404, "API key not found", "There is no such API key: it was deleted already.") from None
    return await all_keys(request, notice=f"API key {api_key} was revoked; it and its sessions stopped working.")


async def key_usage(request: Request) -> Response:
    signed = await require_admin(request)
    return await render_usage(request, signed, request.path_params["api_key"], "/admin/keys")


async def sessions(request: Request, notice: str = "") -> Response:
    signed = await require_admin(request)
    listing = Listing.of(request)
    found = await keygate(request).sessions.page(signed.principal, listing.q, listing.page, DEFAULT_PAGE_SIZE)
    names = await _names(request, signed, (s.user_id for s in found.items))
    return render(request, "admin_sessions.html", signed, sessions=found.items, users=names,
                  notice=notice, own_hash=signed.principal.token_hash, **_paging(listing, found))


async def end_session(request: Request) -> Response:
    signed = await require_admin(request)
    form = await checked_form(request, signed)
    try:
        target = await keygate(request).auth.end_session(signed.principal, field(form, "session"))
    except NotFound:
        raise PageError(404, "Session not found", "That session has already ended.") from None
    return await sessions(request, notice=f"The session {session_label(target.token_hash)}\u2026 was ended.")


def _parse_time(raw: str, name: str, errors: dict[str, str]) -> datetime | None:
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        errors[name] = f"{raw!r} is not a date and time; use the picker or YYYY-MM-DDTHH:MM."
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


async def audit(request: Request) -> Response:
    signed = await require_admin(request)
    q = request.query_params
    f = {name: (q.get(name) or "").strip() for name in ("action", "outcome", "user_id", "api_key", "since", "until", "limit")}
    errors: dict[str, str] = {}
    filters: dict[str, object] = {}
    if f["action"]:
        filters["action"] = f["action"][:48]
    if f["outcome"]:
        filters["outcome"] = f["outcome"][:16]
    if f["user_id"]:
        if f["user_id"].isdigit() and len(f["user_id"]) <= 18:
            filters["user_id"] = int(f["user_id"])
        else:
            errors["user_id"] = "User id must be a whole number."
    if f["api_key"]:
        filters["api_key"] = f["api_key"][:64]
    filters["since"] = _parse_time(f["since"], "since", errors)
    filters["until"] = _parse_time(f["until"], "until", errors)
    limit = 100
    if f["limit"]:
        if f["limit"].isdigit() and 1 <= int(f["limit"]) <= MAX_AUDIT_ROWS:
            limit = int(f["limit"])
        else:
            errors["limit"] = f"Show between 1 and {MAX_AUDIT_ROWS} events."
    filters["limit"] = limit
    events = []
    if not errors:
        try:
            events = await keygate(request).audit.query(signed.principal, **filters)
        except InvalidRequest as exc:
            errors["form"] = exc.message
    return render(request, "admin_audit.html", signed, status=400 if errors else 200, events=events, f=f, errors=errors,
                  actions=AUDIT_ACTIONS, outcomes=AUDIT_OUTCOMES, limit=limit,
                  users=await _names(request, signed, (i for e in events for i in (e.subject_user_id, e.actor_user_id))))


ROUTES = [
    Route("/admin/users", users, methods=["GET"]),
    Route("/admin/users", create_user, methods=["POST"]),
    Route("/admin/users/{user_id}/lock", set_locked, methods=["POST"]),
    Route("/admin/users/{user_id}/password", reset_password, methods=["POST"]),
    Route("/admin/users/{user_id}/signout", sign_out_user, methods=["POST"]),
    Route("/admin/keys", all_keys, methods=["GET"]),
    Route("/admin/keys/{api_key}/revoke", revoke_key, methods=["POST"]),
    Route("/admin/keys/{api_key}/usage", key_usage, methods=["GET"]),
    Route("/admin/sessions", sessions, methods=["GET"]),
    Route("/admin/sessions/end", end_session, methods=["POST"]),
    Route("/admin/audit", audit, methods=["GET"]),
]
