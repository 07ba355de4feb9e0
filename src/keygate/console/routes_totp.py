"""Two-factor sign-in (TOTP): enrol with a QR code or the text secret, confirm with a code, remove."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from keygate.console.qr import qr_svg
from keygate.console.web import checked_form, field, keygate, redirect, render, require_user
from keygate.domain.errors import InvalidRequest


async def two_factor(request: Request) -> Response:
    signed = await require_user(request)
    return render(request, "totp.html", signed, stage="status")


async def begin(request: Request) -> Response:
    signed = await require_user(request)
    await checked_form(request, signed)
    user = signed.user
    if user.uses_2fa:
        return redirect(request, "/two-factor")
    secret, uri = await keygate(request).users.begin_totp(signed.principal, user.user_id)
    grouped = " ".join(secret[i:i + 4] for i in range(0, len(secret), 4))
    response = render(request, "totp.html", signed, stage="enrol", secret=grouped,
                      qr=qr_svg(uri, "QR code for your authenticator app"))
    response.headers["cache-control"] = "no-store"
    return response


async def confirm(request: Request) -> Response:
    signed = await require_user(request)
    form = await checked_form(request, signed)
    try:
        await keygate(request).users.confirm_totp(signed.principal, signed.principal.user_id, field(form, "code").replace(" ", ""))
    except InvalidRequest as exc:
        return render(request, "totp.html", signed, status=400, stage="retry", error=exc.message)
    return redirect(request, "/?done=totp-on")


async def remove(request: Request) -> Response:
    signed = await require_user(request)
    form = await checked_form(request, signed)
    principal = signed.principal
    try:
        await keygate(request).users.disable_totp(principal, principal.user_id, field(form, "code").replace(" ", ""))
    except InvalidRequest as exc:
        return render(request, "totp.html", signed, status=400, stage="status", error=exc.message)
    return redirect(request, "/?done=totp-off")


ROUTES = [
    Route("/two-factor", two_factor, methods=["GET"]),
    Route("/two-factor/begin", begin, methods=["POST"]),
    Route("/two-factor/confirm", confirm, methods=["POST"]),
    Route("/two-factor/remove", remove, methods=["POST"]),
]
