"""ASGI middleware: canonical APEX paths and the handlers' context, and a hard limit on body size."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from keygate.api.wire import ClientAddress
    from keygate.service import Keygate

CONTEXT_KEY = "keygate.context"


class ApexContext:
    """What the APEX handlers need from their app: the service, and how to read the client address.

    ``ApexScope`` puts it in every request's scope, where a handler finds it with one lookup
    (``app.state`` costs a Python-level ``__getattr__`` per attribute, on every private call).
    """

    __slots__ = ("keygate", "client_address")

    def __init__(self, client_address: "ClientAddress", keygate: "Keygate | None" = None) -> None:
        self.client_address = client_address
        self.keygate = keygate  # set at startup when the app opens its own


class ApexScope:
    """Put the ``ApexContext`` in the scope, and rewrite ``/ap/authenticateuser`` (any case) to
    ``/AP/AuthenticateUser`` before routing.

    APEX clients use both ``/AP/`` and ``/ap/`` and name endpoints without regard to case.
    """

    def __init__(self, app: ASGIApp, endpoint_names: Iterable[str], context: ApexContext) -> None:
        self.app = app
        self._names = {n.lower(): n for n in endpoint_names}
        self._context = context

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope[CONTEXT_KEY] = self._context
            path: str = scope["path"]
            parts = path.split("/")
            if len(parts) == 3 and parts[1].lower() == "ap":
                name = self._names.get(parts[2].lower(), parts[2])
                canonical = f"/AP/{name}"
                if canonical != path:
                    scope = dict(scope, path=canonical, raw_path=canonical.encode())
        await self.app(scope, receive, send)


class BodyLimit:
    """Bound every request body to ``max_bytes``, on every route (APEX, console forms, anything mounted).

    A declared ``Content-Length`` above the limit is refused with 413 before anything is read. A body
    without a length (chunked), or longer than it said, is counted while it is read: the moment it
    passes the limit the client gets 413, and the application sees the client gone
    (``http.disconnect``), so a form parser stops at once instead of spooling the rest to disk.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _reply(self) -> tuple[Message, Message]:
        body = json.dumps(
            {"result": False, "errormsg": f"Request body is larger than {self.max_bytes} bytes", "errorcode": 100, "detail": None}
        ).encode()
        start: Message = {"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]}
        return start, {"type": "http.response.body", "body": body}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = True
                if too_big:
                    for message in self._reply():
                        await send(message)
                    return
        received = 0
        refused = False  # we answered 413: the application's own reply is dropped
        started = False

        async def bounded_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    refused = True
                    if not started:
                        for reply in self._reply():
                            await send(reply)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, bounded_receive, guarded_send)
        except ClientDisconnect:
            if not refused:
                raise
