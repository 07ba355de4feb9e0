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
STATUS_HEADER = b"x-keygate-status"  # with KEYGATE_REFUSAL_STATUS=200: the 4xx status a refusal would have had


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
    """Put the ``ApexContext`` in the scope, and give every APEX path its one canonical form before
    routing: ``/ap/authenticateuser/``, ``/AP//AuthenticateUser`` and ``//Ap/AUTHENTICATEUSER`` all
    become ``/AP/AuthenticateUser``, and ``/wsgateway/`` becomes ``/WSGateway``, for HTTP and WebSocket.

    APEX clients use both ``/AP/`` and ``/ap/``, name endpoints without regard to case, and some add a
    trailing slash. Rewriting here, rather than redirecting, answers them at once: the router's
    ``redirect_slashes`` never sees a trailing slash on an APEX path.

    With ``refusal_status="200"`` a refusal on an APEX path (any 4xx) is answered with status 200 and
    the same APEX body, for SDKs that raise on a status of 400 or more before reading the body.
    """

    def __init__(self, app: ASGIApp, endpoint_names: Iterable[str], context: ApexContext,
                 websocket_paths: Iterable[str] = (), refusal_status: str = "4xx") -> None:
        self.app = app
        self._names = {n.lower(): n for n in endpoint_names}
        self._canonical = frozenset(f"/AP/{n}" for n in self._names.values())
        self._websocket = {p.strip("/").lower(): p for p in websocket_paths}
        self._context = context
        self._refusals_as_200 = refusal_status == "200"

    def canonical_path(self, path: str, websocket: bool) -> str | None:
        """The canonical form of an APEX (or WebSocket gateway) path, or None for any other path."""
        return canonical_apex_path(path, self._names, self._websocket if websocket else None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http" or kind == "websocket":
            scope[CONTEXT_KEY] = self._context
            path: str = scope["path"]
            apex = path in self._canonical  # the common case: nothing to rewrite
            if not apex:
                root: str = scope.get("root_path", "")
                prefix = root if root and path.startswith(root) else ""
                canonical = self.canonical_path(path[len(prefix):], kind == "websocket")
                if canonical is not None:
                    apex = True
                    if prefix + canonical != path:
                        full = prefix + canonical
                        # the path as sent stays known: a Signature v2 covers it (api/endpoints.v2_parts)
                        sent = scope.get("raw_path") or path.encode()
                        scope = dict(scope, path=full, raw_path=full.encode())
                        scope["keygate.sent_raw_path"] = sent
            if apex and kind == "http" and self._refusals_as_200:
                send = _refusals_as_200(send)
        await self.app(scope, receive, send)


def canonical_apex_path(path: str, names: dict[str, str], websocket: dict[str, str] | None = None) -> str | None:
    """``ApexScope.canonical_path``: ``names`` maps lower-case endpoint names to their canonical
    spelling, ``websocket`` (given for a WebSocket connection only) the gateway's paths the same way."""
    parts = [p for p in path.split("/") if p]
    if len(parts) == 2 and parts[0].lower() == "ap":
        return "/AP/" + names.get(parts[1].lower(), parts[1])
    if websocket is not None and len(parts) == 1:
        return websocket.get(parts[0].lower())
    return None


def _refusals_as_200(send: Send) -> Send:
    """Answer a 4xx with 200 (headers such as ``Retry-After`` and ``Allow`` and the body unchanged),
    adding ``X-Keygate-Status`` with the status it replaces, for clients that want it (the SDK does).

    Server faults (5xx) keep their status: they are not refusals, and proxies and monitors read them.
    """

    async def sender(message: Message) -> None:
        if message["type"] == "http.response.start" and 400 <= message["status"] < 500:
            headers = [*message.get("headers", ()), (STATUS_HEADER, str(message["status"]).encode())]
            message = {**message, "status": 200, "headers": headers}
        await send(message)

    return sender


def too_large_reply(max_bytes: int) -> tuple[Message, Message]:
    """The 413 of ``BodyLimit``: its start and body messages (the connection is closed after it)."""
    body = json.dumps(
        {"result": False, "errormsg": f"Request body is larger than {max_bytes} bytes", "errorcode": 100, "detail": None}
    ).encode()
    start: Message = {"type": "http.response.start", "status": 413, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]}
    return start, {"type": "http.response.body", "body": body}


def content_length_too_big(value: bytes, max_bytes: int) -> bool:
    """Whether a ``Content-Length`` value refuses the request: above ``max_bytes``, or not a number."""
    try:
        return int(value) > max_bytes
    except ValueError:
        return True


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
        return too_large_reply(self.max_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                if content_length_too_big(value, self.max_bytes):
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
