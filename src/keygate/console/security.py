"""Cookies, CSRF tokens, one-time form ids and the security headers of every console response.

CSRF tokens are derived, not stored: a token is ``HMAC-SHA256(key=<secret cookie value>, purpose)``.
The cookie is HttpOnly and SameSite=Strict, so another site can neither read it nor make the browser
send it, and without it nobody can compute the token. Three secrets key the three stages:

* before sign-in, a random ``kg_pre`` cookie (login form);
* between password and TOTP code, the pending-2FA token (``kg_2fa``);
* once signed in, the session token itself (``kg_session``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keygate.service.cache import TTLCache

SESSION_COOKIE = "kg_session"
PENDING_COOKIE = "kg_2fa"
PRE_COOKIE = "kg_pre"
DEVICE_COOKIE = "kg_device"  # signed device token (keygate.domain.devices), set at each password sign-in
CSRF_FIELD = "csrf_token"
FORM_ID_FIELD = "form_id"

PURPOSE_SESSION = "keygate-console-csrf"
PURPOSE_LOGIN = "keygate-console-login"
PURPOSE_2FA = "keygate-console-2fa"

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'none'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


def csrf_token(secret: str, purpose: str) -> str:
    return hmac.new(secret.encode(), purpose.encode(), hashlib.sha256).hexdigest()


def csrf_ok(secret: str | None, purpose: str, sent: object) -> bool:
    if not secret or not isinstance(sent, str) or not sent:
        return False
    return hmac.compare_digest(csrf_token(secret, purpose).encode(), sent.encode())


def cookie_path(request: Request) -> str:
    return request.scope.get("root_path") or "/"


def set_cookie(request: Request, response: Response, name: str, value: str, max_age: int | None = None) -> None:
    response.set_cookie(
        name, value, max_age=max_age, path=cookie_path(request), httponly=True,
        samesite="strict", secure=request.url.scheme == "https",
    )


def clear_cookie(request: Request, response: Response, name: str) -> None:
    response.delete_cookie(name, path=cookie_path(request), httponly=True, samesite="strict",
                           secure=request.url.scheme == "https")


def new_secret() -> str:
    return secrets.token_urlsafe(32)


class FormOnce:
    """Remembers which one-time form ids were used, so a second submission is refused.

    Kept in memory: a double submit arrives within seconds at the same process. A form id is only
    meaningful together with the session that rendered it.
    """

    def __init__(self, ttl_seconds: float = 86_400) -> None:
        self._used: TTLCache[str, bool] = TTLCache(ttl_seconds, max_entries=50_000)

    @staticmethod
    def new_id() -> str:
        return secrets.token_urlsafe(16)

    def claim(self, session_secret: str, form_id: object) -> bool:
        """True the first time ``form_id`` is seen for this session; False for a repeat."""
        if not isinstance(form_id, str) or not form_id or len(form_id) > 64:
            return False
        key = hashlib.sha256(f"{session_secret}:{form_id}".encode()).hexdigest()
        hit, _ = self._used.get(key)
        if hit:
            return False
        self._used.put(key, True)
        return True


class SecurityHeaders:
    """Add CSP, framing, sniffing and referrer headers; HTML pages are never stored by caches."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                extra = [
                    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
                    (b"x-frame-options", b"DENY"),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"cross-origin-opener-policy", b"same-origin"),
                ]
                content_type = dict(headers).get(b"content-type", b"")
                if b"cache-control" not in names and content_type.startswith(b"text/html"):
                    extra.append((b"cache-control", b"no-store"))
                message["headers"] = headers + [(k, v) for k, v in extra if k not in names]
            await send(message)

        await self.app(scope, receive, send_with_headers)
