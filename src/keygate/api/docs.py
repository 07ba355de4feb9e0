"""The interactive API docs at ``/docs``, served entirely by keygate: no CDN, no inline script.

FastAPI's own ``/docs`` page loads Swagger UI's script and styles from a public CDN, so it is blank
without internet and runs a third party's script on the origin of the console's session cookies.
Here Swagger UI's files come from an installed package (``fastapi-offline`` ships the dist files),
its start-up code is a static file of keygate's, and the page and its assets carry a
Content-Security-Policy as strict as the console's; only ``connect-src`` is ``'self'`` instead of
``'none'``, since Swagger UI fetches ``/openapi.json`` and sends "Try it out" calls to this origin.

ReDoc is not served: it needs inline styles and ``blob:`` workers, which this policy refuses.
``/redoc`` sends visitors to ``/docs``.
"""

from __future__ import annotations

import html
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PATH = "/docs"
SWAGGER_UI = Path(fastapi_offline.__file__).parent / "static"
OWN_STATIC = Path(__file__).parent / "static"

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
]

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} - API docs</title>
<link rel="stylesheet" href="{root}/docs/swagger-ui/swagger-ui.css">
<link rel="icon" type="image/png" href="{root}/docs/swagger-ui/favicon.png">
</head>
<body>
<div id="swagger-ui" data-openapi-url="{root}/openapi.json"></div>
<script src="{root}/docs/swagger-ui/swagger-ui-bundle.js"></script>
<script src="{root}/docs/static/docs.js"></script>
</body>
</html>
"""


class DocsSecurityHeaders:
    """The docs' CSP and companions, on the page and on every asset under it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                message["headers"] = headers + [(k, v) for k, v in _HEADERS if k not in names]
            await send(message)

        await self.app(scope, receive, with_headers)


def install_docs(app: FastAPI) -> None:
    """Serve ``/docs`` and its assets (create the app with ``docs_url=None, redoc_url=None``)."""
    page_title = html.escape(app.title)

    async def docs(request: Request) -> Response:
        root = html.escape(request.scope.get("root_path", "").rstrip("/"), quote=True)
        response = HTMLResponse(_PAGE.format(title=page_title, root=root), headers={"Cache-Control": "no-store"})
        response.headers.update({k.decode(): v.decode() for k, v in _HEADERS})
        return response

    async def redoc(request: Request) -> Response:
        return RedirectResponse(request.scope.get("root_path", "").rstrip("/") + PATH, status_code=307)

    app.add_route(PATH, docs, methods=["GET"], include_in_schema=False)
    app.add_route("/redoc", redoc, methods=["GET"], include_in_schema=False)
    app.router.routes.append(Mount(f"{PATH}/swagger-ui", app=DocsSecurityHeaders(StaticFiles(directory=SWAGGER_UI))))
    app.router.routes.append(Mount(f"{PATH}/static", app=DocsSecurityHeaders(StaticFiles(directory=OWN_STATIC))))
