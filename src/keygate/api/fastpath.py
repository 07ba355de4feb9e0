"""The direct route of the APEX endpoints and of forward auth: no framework per request.

The app's middleware stack is ``Observe`` → Starlette's ``ServerErrorMiddleware`` → ``ProxyHeaders``
→ ``ApexScope`` → ``BodyLimit`` → Starlette's ``ExceptionMiddleware`` → the router → ``EndpointIndex``
→ a FastAPI ``APIRoute`` (dependency solving, ``response_class``) → the handler. For the calls that
matter most, each of those layers costs as much as the work itself: a bare FastAPI hello answers
less than half the requests of a bare Starlette one, and the router tried ~50 routes before
``/keygate/authorize``.

``ApexFront`` stands in front of that stack. A ``GET`` or ``POST`` of a registered APEX endpoint
(in any of the path forms ``ApexScope`` accepts) or of ``/keygate/authorize`` (with or without
Envoy's suffix) is answered here, doing in one function, in the same order, what each layer does:

1. ``Observe``: the request id (the client's sane ``X-Request-Id``, or a new one) in the logging
   context and in the reply's ``X-Request-Id``; the request counted and timed under its endpoint.
2. ``ServerErrorMiddleware`` and the app's ``Exception`` handler: an unexpected exception is logged
   (``internal error on <path>``, with its traceback, in the server's log only), answered with the
   generic 500 reply (errorcode 102) if nothing was sent yet, and raised again, so that uvicorn
   writes its own error line as before.
3. ``ProxyHeaders``: the client's address and scheme from ``ClientAddress`` (trusted proxies only),
   into the scope; conflicting forwarding headers answer 400.
4. ``ApexScope``: the handlers' ``ApexContext`` in the scope, the canonical path, and with
   ``KEYGATE_REFUSAL_STATUS=200`` a 4xx on an APEX path answered 200 with ``X-Keygate-Status``.
5. ``BodyLimit``: a ``Content-Length`` above the limit (or unreadable) answers 413.
6. ``ExceptionMiddleware``: a ``KeygateError`` answers ``replies.error``.
7. The registry's handler (``ENDPOINTS[name].handler``: the private ones authenticate and check
   their level in ``endpoints._guarded``), or ``forward_auth.authorize``.

Everything else goes through the stack unchanged: other methods (405 with ``Allow``), unknown
endpoints (404), a body without a length (``Transfer-Encoding``: ``BodyLimit`` counts it as it is
read), HTTP/2, a ``root_path``, WebSocket, the console, docs, health and metrics. The FastAPI routes of the
APEX endpoints stay registered, so ``/openapi.json`` is still built from the one registry.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from keygate.api import replies
from keygate.api.metrics import Observe
from keygate.api.middleware import (
    CONTEXT_KEY,
    STATUS_HEADER,
    ApexContext,
    canonical_apex_path,
    content_length_too_big,
    too_large_reply,
)
from keygate.api.wire import RESOLVED_KEY, ClientAddress, ConflictingForwarding
from keygate.domain.errors import KeygateError
from keygate.logs import pick_request_id, request_id

log = logging.getLogger("keygate.api")  # the logger of the app's own ``internal error`` line

Handler = Callable[[Request], Awaitable[Response]]
_SCHEMES = {"http": "http", "https": "https"}
_HTTP1 = frozenset({"1.1", "1.0"})
_PLAIN_CALL = Response.__call__


class ApexFront:
    def __init__(self, app: Observe, *, handlers: dict[str, Handler], forward_path: str, forward_handler: Handler,
                 client_address: ClientAddress, context: ApexContext, max_body_bytes: int,
                 refusal_status: str = "4xx") -> None:
        self.app = app  # the whole stack, for every request not answered here
        self._observe = app
        self._apex = dict(handlers)  # canonical path ("/AP/GetUserInfo") -> handler
        self._names = {path[4:].lower(): path[4:] for path in self._apex}
        self._forward_path = forward_path
        self._forward_prefix = forward_path + "/"
        self._forward = forward_handler
        self._client_address = client_address
        self._context = context
        self._max_body = max_body_bytes
        self._refusals_as_200 = refusal_status == "200"

    def route(self, path: str) -> tuple[Handler, str, bool] | None:
        """``(handler, canonical path, is an APEX path)`` for a path answered here, else None."""
        handler = self._apex.get(path)
        if handler is not None:
            return handler, path, True
        if path == self._forward_path or path.startswith(self._forward_prefix):
            return self._forward, path, False
        canonical = canonical_apex_path(path, self._names)
        if canonical is not None:
            handler = self._apex.get(canonical)
            if handler is not None:
                return handler, canonical, True
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # HTTP/1.x only: there a body without Content-Length or Transfer-Encoding is empty, so a length
        # within the limit bounds the body (an HTTP/2 server may stream one without either).
        if scope["type"] != "http" or scope.get("root_path") or scope.get("http_version") not in _HTTP1:
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        if method != "GET" and method != "POST":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        found = self.route(path)
        if found is None:
            await self.app(scope, receive, send)
            return
        incoming = None
        too_big = False
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                if incoming is None:
                    incoming = value
            elif name == b"content-length":
                too_big = too_big or content_length_too_big(value, self._max_body)
            elif name == b"transfer-encoding":  # a body of unknown length: BodyLimit counts it as it comes
                await self.app(scope, receive, send)
                return
        handler, canonical, apex = found

        # 1. Observe
        rid = pick_request_id(incoming)
        request_id.set(rid)
        started = time.perf_counter()
        target = self._observe.series_for(path)
        rid_header = (b"x-request-id", rid.encode())
        status = 500
        sent = False
        original_path = path
        try:
            # 3. ProxyHeaders
            try:
                client, proto = self._client_address.resolve(scope)
            except ConflictingForwarding as exc:
                status = await _send(send, replies.error(exc), rid_header, False)
                return
            scope["client"] = client  # the server's scope of this one request: changed in place
            if proto is not None:
                scope["scheme"] = _SCHEMES[proto]
            scope[RESOLVED_KEY] = True
            # 4. ApexScope
            scope[CONTEXT_KEY] = self._context
            if canonical != path:
                # the path as sent stays known: a Signature v2 covers it (api/endpoints.v2_parts)
                scope["keygate.sent_raw_path"] = scope.get("raw_path") or path.encode()
                scope["path"], scope["raw_path"] = canonical, canonical.encode()
            as_200 = apex and self._refusals_as_200
            # 5. BodyLimit
            if too_big:
                start, body = too_large_reply(self._max_body)
                if as_200:
                    start = {**start, "status": 200, "headers": [*start["headers"], (STATUS_HEADER, b"413")]}
                start["headers"] = [*start["headers"], rid_header]
                sent = True
                status = start["status"]
                await send(start)
                await send(body)
                return
            # 6. and 7.
            request = Request(scope, receive)
            try:
                response = await handler(request)
            except KeygateError as exc:
                response = replies.error(exc)
            sent = True
            status = await _send(send, response, rid_header, as_200, scope, receive)
        except Exception as exc:
            # 2. ServerErrorMiddleware, with the app's ``Exception`` handler
            log.error("internal error on %s: %s", original_path, type(exc).__name__, exc_info=exc)
            if not sent:
                status = await _send(send, replies.generic(False, "Server Error", 102, status=500), rid_header, False)
            raise
        finally:
            target.count(status)
            target.observe(time.perf_counter() - started)


async def _send(send: Send, response: Response, rid_header: tuple[bytes, bytes], as_200: bool,
                scope: Scope | None = None, receive: Receive | None = None) -> int:
    """Send ``response`` with the request id (a refusal as 200 when ``as_200``); return the status sent."""
    status = response.status_code
    if type(response).__call__ is _PLAIN_CALL and response.background is None:
        headers = response.raw_headers
        if as_200 and 400 <= status < 500:
            headers = [*headers, (STATUS_HEADER, str(status).encode())]
            status = 200
        await send({"type": "http.response.start", "status": status, "headers": [*headers, rid_header]})
        await send({"type": "http.response.body", "body": response.body})
        return status
    # Anything else (a streamed reply, background tasks): the response sends itself, through the same rules.
    sent_status = status

    async def wrapped(message: Message) -> None:
        nonlocal sent_status
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", ()))
            sent_status = message["status"]
            if as_200 and 400 <= sent_status < 500:
                headers.append((STATUS_HEADER, str(sent_status).encode()))
                sent_status = 200
            message = {**message, "status": sent_status, "headers": [*headers, rid_header]}
        await send(message)

    await response(scope or {"type": "http"}, receive or _no_receive, wrapped)
    return sent_status


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def apex_handlers(endpoints: Iterable[tuple[str, Handler]]) -> dict[str, Handler]:
    """Canonical paths of the registry's endpoints, and their handlers."""
    return {f"/AP/{name}": handler for name, handler in endpoints}
