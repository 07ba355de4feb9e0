"""The FastAPI application: routes for every APEX endpoint, error handling, lifecycle."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp

from keygate import __version__
from keygate.api import replies
from keygate.api.docs import install_docs
from keygate.api.endpoints import ENDPOINTS
from keygate.api.fastpath import ApexFront, apex_handlers
from keygate.api.forward_auth import PATH as FORWARD_AUTH_PATH
from keygate.api.forward_auth import authorize, install_forward_auth
from keygate.api.health import install_health
from keygate.api.metrics import Observe, install_metrics
from keygate.api.middleware import ApexContext, ApexScope, BodyLimit
from keygate.api.openapi import SCHEMAS, operation_extra, responses_for
from keygate.api.proxy import ProxyHeaders
from keygate.api.routing import index_routes
from keygate.api.websocket import PATHS as WEBSOCKET_PATHS
from keygate.api.websocket import install_websocket
from keygate.api.wire import ClientAddress
from keygate.config import Settings
from keygate.console import mount_console
from keygate.domain.errors import KeygateError
from keygate.service import Keygate
from keygate.store.database import migrate
from keygate.telemetry import forget_process
from keygate.telemetry import sync as sync_metrics

log = logging.getLogger("keygate.api")

DESCRIPTION = """APEX-compatible API-key authentication.

Sign `Nonce + UserId + APIKey` with HMAC-SHA256 keyed by the API secret, send the four headers
`APIKey`, `Signature`, `UserId`, `Nonce` to `AuthenticateUser`, and send the returned `SessionToken`
as the `aptoken` header on later calls. Paths are matched without regard to case: `/AP/...` and `/ap/...`.
Errors answer a 4xx with `{"result": false, "errormsg", "errorcode", "detail"}`.
"""

DESCRIPTION_200 = DESCRIPTION.replace(
    "Errors answer a 4xx with",
    "This server runs with `KEYGATE_REFUSAL_STATUS=200`: refusals answer HTTP 200 (server faults keep their 5xx) with",
)


def create_app(settings: Settings | None = None, keygate: Keygate | None = None) -> FastAPI:
    """Build the app. Given no ``keygate``, it opens one from ``settings`` at startup and closes it at shutdown."""
    settings = settings or (keygate.settings if keygate else Settings.from_env())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = keygate is None
        kg = keygate or Keygate(settings, create_master_key=False)
        if owned:
            await migrate(kg.engine)
        app.state.keygate = context.keygate = kg
        await kg.start_background()
        # Everything loaded by now (the framework, SQLAlchemy, the app) lives as long as the process.
        # Frozen, it is left out of every garbage collection: a full collection otherwise walked
        # hundreds of thousands of such objects, a pause of tens of milliseconds under load.
        gc.freeze()
        try:
            yield
        finally:
            if owned:
                await kg.close()
            sync_metrics()
            forget_process()

    description = DESCRIPTION_200 if settings.refusal_status == "200" else DESCRIPTION
    # keygate serves /docs itself, without a CDN (api/docs.py). FastAPI's own OpenTelemetry bridge is off:
    # keygate reports through /metrics and its logs, and the bridge looked up three OpenTelemetry
    # providers (and the environment) on every request, before any middleware ran.
    app = FastAPI(title="keygate", version=__version__, description=description, lifespan=lifespan,
                  docs_url=None, redoc_url=None, telemetry={"tracing": False, "metrics": False, "logs": False})
    app.state.client_address = ClientAddress(settings.trusted_proxies)
    context = ApexContext(app.state.client_address, keygate)
    if keygate is not None:
        app.state.keygate = keygate

    for ep in ENDPOINTS.values():
        for method in ("GET", "POST"):
            app.add_api_route(
                f"/AP/{ep.name}",
                ep.handler,
                methods=[method],
                name=f"{ep.name}_{method.lower()}",
                operation_id=f"{ep.name}_{method.lower()}",
                summary=ep.summary,
                description=ep.description,
                tags=["APEX: " + ("public" if ep.auth in ("none", "credentials") else "private")],
                responses=responses_for(ep, settings.refusal_status),
                openapi_extra=operation_extra(ep, method),
                response_class=replies.ApexJSON,
            )
    index_routes(app)
    install_forward_auth(app)
    install_websocket(app)
    install_health(app)
    install_docs(app)
    if settings.metrics:
        install_metrics(app)

    _install_error_handlers(app)
    mount_console(app)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schema.setdefault("components", {}).setdefault("schemas", {}).update(SCHEMAS)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(ApexScope, endpoint_names=list(ENDPOINTS), context=context, websocket_paths=WEBSOCKET_PATHS,
                       refusal_status=settings.refusal_status)
    # Outermost (added last): every layer below sees the one client address and scheme it settles.
    app.add_middleware(ProxyHeaders, client_address=app.state.client_address)
    # Outside even Starlette's error middleware, so that a 500 is counted and carries X-Request-Id too.
    build = app.build_middleware_stack

    def build_stack() -> ASGIApp:
        observed = Observe(build(), endpoint_names=list(ENDPOINTS))
        # In front of everything: the APEX endpoints and forward auth without the framework (api/fastpath.py).
        return ApexFront(observed, handlers=apex_handlers((ep.name, ep.handler) for ep in ENDPOINTS.values()),
                         forward_path=FORWARD_AUTH_PATH, forward_handler=authorize, client_address=app.state.client_address,
                         context=context, max_body_bytes=settings.max_body_bytes, refusal_status=settings.refusal_status)

    app.build_middleware_stack = build_stack  # type: ignore[method-assign]
    return app


def _allowed_methods(request: Request) -> list[str]:
    """The methods the requested path takes: GET and POST for every APEX endpoint (reached through the
    index, which has no single path), those of its route for the others (``/healthz``: GET)."""
    path, allowed = request.scope["path"], set()
    for route in request.app.router.routes:
        regex, methods = getattr(route, "path_regex", None), getattr(route, "methods", None)
        if regex is not None and methods and regex.match(path):
            allowed |= methods
    return sorted(allowed) or ["GET", "POST"]


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(KeygateError)
    async def keygate_error(request: Request, exc: KeygateError) -> Response:
        return replies.error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            name = request.url.path.rsplit("/", 1)[-1][:64]
            return replies.generic(False, f"Unknown endpoint {name!r}; see /openapi.json for the list", 104, status=404)
        if exc.status_code == 405:
            allowed = _allowed_methods(request)
            reply = replies.generic(False, f"Method not allowed; use {' or '.join(allowed)}", 106, status=405)
            reply.headers["Allow"] = ", ".join(allowed)  # RFC 9110 requires the header
            return reply
        return replies.generic(False, str(exc.detail), 100, status=exc.status_code if 400 <= exc.status_code < 500 else 400)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        return replies.generic(False, "Invalid Request", 100, status=400)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:
        log.error("internal error on %s: %s", request.url.path, type(exc).__name__, exc_info=exc)
        return replies.generic(False, "Server Error", 102, status=500)

