"""``/metrics`` and the request middleware that counts, times and names every request.

``Observe`` is a raw ASGI middleware (no ``BaseHTTPMiddleware``: no extra task, no body copies): per
request it picks the request id, names the endpoint from a fixed set, and on the way out adds the
``X-Request-Id`` header and counts the status and the time taken. An endpoint label is one of the
APEX endpoint names (canonical spelling, whatever case the client used), ``forward_auth``,
``console``, ``websocket`` (WebSocket frames, counted by the gateway), ``docs``, ``metrics``,
``healthz``, ``readyz``, or ``other`` for anything else: random paths add no series.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from keygate.logs import pick_request_id, request_id
from keygate.telemetry import (
    LATENCY,
    REQUESTS,
    LocalCounter,
    LocalHistogram,
    multiprocess_dir,
    sync,
)

PATH = "/metrics"
FIXED = {
    "/keygate/authorize": "forward_auth",
    "/docs": "docs", "/docs/oauth2-redirect": "docs", "/redoc": "docs", "/openapi.json": "docs",
    PATH: "metrics", "/healthz": "healthz", "/readyz": "readyz",
}


class _Series:
    """The local counter and histogram of one endpoint label, and its counters per status."""

    __slots__ = ("by_status", "label", "observe")

    def __init__(self, label: str) -> None:
        self.label = label
        self.observe = self._first_observe  # the histogram's series appear with the endpoint's first request
        self.by_status: dict[int, Any] = {}

    def _first_observe(self, seconds: float) -> None:
        self.observe = LocalHistogram(LATENCY.labels(self.label)).observe
        self.observe(seconds)

    def count(self, status: int) -> None:
        inc = self.by_status.get(status)
        if inc is None:
            inc = self.by_status[status] = LocalCounter(REQUESTS.labels(self.label, str(status))).inc
        inc()


_series: dict[str, _Series] = {}


def series(label: str) -> _Series:
    found = _series.get(label)
    if found is None:
        found = _series[label] = _Series(label)
    return found


def observe_frame(status: int, seconds: float) -> None:
    """One WebSocket frame answered (with the HTTP status its handler gave, or 400 for a bad frame)."""
    s = series("websocket")
    s.count(status)
    s.observe(seconds)


class Observe:
    def __init__(self, app: ASGIApp, endpoint_names: Iterable[str]) -> None:
        self.app = app
        self._apex = {f"/ap/{n.lower()}": series(n) for n in endpoint_names}
        self._fixed = {path: series(label) for path, label in FIXED.items()}
        self._console = series("console")
        self._other = series("other")

    def series_for(self, path: str) -> _Series:
        """The series of a request for ``path`` (as the client sent it)."""
        found = self._fixed.get(path) or self._apex.get(path.lower())
        if found is not None:
            return found
        if path == "/console" or path.startswith("/console/"):
            return self._console
        return self._other

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                incoming = value
                break
        rid = pick_request_id(incoming)
        # Not reset afterwards: the task serves this request only, and uvicorn's error line for an
        # exception that escapes the app is written in it after the app returns.
        request_id.set(rid)
        if kind == "websocket":  # frames are counted one by one by the gateway
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        target = self.series_for(scope["path"])
        status = 500  # what the client gets if the app fails before it answers
        header = (b"x-request-id", rid.encode())

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            target.count(status)
            target.observe(time.perf_counter() - started)


def _registry() -> CollectorRegistry:
    folder = multiprocess_dir()
    if folder is None:
        return REGISTRY
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=folder)  # type: ignore[no-untyped-call]
    return registry


async def metrics(request: Request) -> Response:
    sync()
    return Response(generate_latest(_registry()), media_type=CONTENT_TYPE_LATEST, headers={"Cache-Control": "no-store"})


def install_metrics(app: FastAPI) -> None:
    app.add_api_route(PATH, metrics, methods=["GET"], include_in_schema=False, name="metrics")
