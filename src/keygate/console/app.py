"""The console as an ASGI sub-application mounted at ``/console`` on the API app.

It has its own error pages (HTML, not APEX JSON) and security headers, and reaches the service
layer through the parent app's ``state.keygate``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keygate.console import routes_admin, routes_auth, routes_keys, routes_tools, routes_totp
from keygate.console.routes_auth import safe_next
from keygate.console.security import SESSION_COOKIE, FormOnce, SecurityHeaders, clear_cookie
from keygate.console.web import MOUNT, PageError, SignInRequired, redirect, render
from keygate.domain.errors import KeygateError

log = logging.getLogger("keygate.console")
STATIC = Path(__file__).parent / "static"


async def _page_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PageError)
    return render(request, "error.html", status=exc.status, title=exc.title, message=exc.message)


async def _sign_in_required(request: Request, exc: Exception) -> Response:
    if request.method in ("GET", "HEAD"):
        here = request.url.path[len(request.scope.get("root_path", "")):] or "/"
        if request.url.query:
            here += "?" + request.url.query
        params = {"m": "expired"} if request.cookies.get(SESSION_COOKIE) else {}
        if safe_next(here) != "/":
            params["next"] = here
        response = redirect(request, "/login" + ("?" + urlencode(params) if params else ""))
    else:
        response = render(request, "error.html", status=401, title="Your session has ended",
                          message="You are not signed in any more, so nothing was changed. Sign in again, then repeat "
                                  "what you were doing.", sign_in=True)
    clear_cookie(request, response, SESSION_COOKIE)
    return response


async def _keygate_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, KeygateError)
    status = exc.http_status if 400 <= exc.http_status < 600 else 400
    return render(request, "error.html", status=status, title="That did not work", message=exc.message)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return render(request, "error.html", status=404, title="Page not found",
                      message="There is no console page at this address.")
    if exc.status_code == 405:
        return render(request, "error.html", status=405, title="Not allowed",
                      message="This page cannot be used that way. Go back and use the buttons on the page.")
    return render(request, "error.html", status=exc.status_code, title="That did not work", message=str(exc.detail))


class CatchAll:
    """Answer an unexpected fault with an HTML 500 page and log it, instead of letting it escape."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except ClientDisconnect:
            raise  # the client left, or BodyLimit cut an oversized body: nobody to answer
        except Exception as exc:
            log.error("console error on %s: %s", scope.get("path"), type(exc).__name__, exc_info=exc)
            if started or scope["type"] != "http":
                return
            response = render(Request(scope), "error.html", status=500, title="Something went wrong",
                              message="The console could not finish this request. Nothing was shown; try again.")
            await response(scope, receive, send)


def create_console(parent: Starlette) -> Starlette:
    routes = [
        *routes_auth.ROUTES, *routes_keys.ROUTES, *routes_totp.ROUTES, *routes_tools.ROUTES, *routes_admin.ROUTES,
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    console = Starlette(
        routes=routes,
        middleware=[Middleware(SecurityHeaders), Middleware(CatchAll)],
        exception_handlers={
            PageError: _page_error,
            SignInRequired: _sign_in_required,
            KeygateError: _keygate_error,
            HTTPException: _http_error,
        },
    )
    console.state.parent = parent
    console.state.form_once = FormOnce()
    return console


def mount_console(app: Starlette) -> None:
    """Serve the console at ``/console`` and send visitors of ``/`` there."""

    async def home(request: Request) -> Response:
        return RedirectResponse(request.scope.get("root_path", "") + MOUNT + "/", status_code=307)

    app.router.routes.append(Route("/", home, methods=["GET"], include_in_schema=False))
    app.router.routes.append(Mount(MOUNT, app=create_console(app)))
