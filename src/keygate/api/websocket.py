"""The APEX WebSocket gateway: the same endpoints, carried in frames.

A frame is ``{"m": 0, "i": <sequence>, "n": "<Endpoint>", "o": "<payload as a JSON string>"}``. Each
request frame runs through the very handler that serves the HTTP endpoint, so the rules are
identical. A successful ``AuthenticateUser``, ``Authenticate``, ``WebAuthenticateUser`` or
``Authenticate2FA`` on the connection makes its session token the connection's own: later frames
need no ``aptoken``, as in APEX. Nothing is sent unsolicited.

Which answer a frame gets (some clients read nothing but ``m: 1`` replies, matched by ``i``):

- ``m`` 0 (request), 2 (subscribe) or 4 (unsubscribe): always an ``m: 1`` reply echoing ``i`` and
  ``n`` exactly as sent, with the reply body as a JSON string in ``o``; a refusal (unknown endpoint,
  unreadable ``o``, not signed in, ...) is the APEX error body ``{"result": false, "errormsg",
  "errorcode", "detail"}``. keygate publishes no events, so ``m`` 2 and 4 answer errorcode 106.
- any other ``m`` (or none): ``m: 5``, echoing ``i`` and ``n`` as sent: the frame is not a request.
- a frame that is not a JSON object, or is too large to read: ``m: 5`` with ``i: 0`` and ``n: ""``,
  since nothing in it can be echoed.

Every frame, and the body in its ``o``, is compact JSON (no spaces), like the HTTP replies.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.websockets import WebSocket, WebSocketDisconnect

from keygate.api import replies
from keygate.api.endpoints import ENDPOINTS, Endpoint
from keygate.api.metrics import observe_frame
from keygate.api.middleware import CONTEXT_KEY
from keygate.api.wire import WEBSOCKET_KEY
from keygate.domain.errors import KeygateError

log = logging.getLogger("keygate.api")

# The canonical paths; ``ApexScope`` maps every other form (any case, trailing slash) onto them.
PATHS = ("/WSGateway", "/ws")
MAX_FRAME = 65536
SIGN_IN = {"authenticateuser", "authenticate", "webauthenticateuser", "authenticate2fa"}
REQUEST, REPLY, SUBSCRIBE, EVENT, UNSUBSCRIBE, ERROR = 0, 1, 2, 3, 4, 5
_ENDPOINTS_BY_LOWER: dict[str, Endpoint] = {}


def _encode(value: object) -> str:
    return replies.encode(value).decode()


def _body(message: str, errorcode: int) -> str:
    return _encode({"result": False, "errormsg": message, "errorcode": errorcode, "detail": None})


def _frame(m: int, i: object, n: object, o: str) -> str:
    return _encode({"m": m, "i": i, "n": n, "o": o})


def _http_request(ws: WebSocket, name: str, payload: bytes, token: str | None) -> Request:
    """The handler's view of one frame: a POST with the payload as its body."""
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    if token:
        headers.append((b"aptoken", token.encode()))
    scope = {
        "type": "http", "http_version": "1.1", "method": "POST", "scheme": "http", "path": f"/AP/{name}",
        "raw_path": f"/AP/{name}".encode(), "query_string": b"", "root_path": "", "headers": headers,
        "client": ws.scope.get("client"), "server": ws.scope.get("server"), "app": ws.scope["app"],
        CONTEXT_KEY: ws.scope[CONTEXT_KEY], WEBSOCKET_KEY: True,
    }
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": payload, "more_body": False}

    return Request(scope, receive)


def _endpoint(name: str) -> Endpoint | None:
    if len(_ENDPOINTS_BY_LOWER) != len(ENDPOINTS):
        _ENDPOINTS_BY_LOWER.clear()
        _ENDPOINTS_BY_LOWER.update({n.lower(): ep for n, ep in ENDPOINTS.items()})
    return _ENDPOINTS_BY_LOWER.get(name.lower())


async def _answer(ws: WebSocket, frame: dict[str, Any], token: str | None) -> tuple[str, str | None, int]:
    """The reply to one frame that is a JSON object, the connection's token afterwards, and the HTTP
    status the answer stands for (for the metrics)."""
    m, i, n, o = frame.get("m"), frame.get("i", 0), frame.get("n", ""), frame.get("o", "")
    if isinstance(m, bool) or m not in (REQUEST, SUBSCRIBE, UNSUBSCRIBE):
        return _frame(ERROR, i, n, _body(
            'Not a request frame: send {"m":0,"i":<number>,"n":"<Endpoint>","o":"<payload as a JSON string>"}', 100)), token, 400
    if not isinstance(n, str) or not n:
        return _frame(REPLY, i, n, _body("The frame's n must name an endpoint, e.g. \"AuthenticateUser\"", 100)), token, 400
    endpoint = _endpoint(n)
    if m != REQUEST:
        what = "subscribe to" if m == SUBSCRIBE else "unsubscribe from"
        return _frame(REPLY, i, n, _body(
            f"Operation Not Supported: keygate publishes no events, so there is nothing to {what}; "
            f"send {n[:64]!r} as a request frame (m: 0)" if endpoint else
            f"Operation Not Supported: keygate publishes no events, so there is nothing to {what}", 106)), token, 400
    if endpoint is None:
        return _frame(REPLY, i, n, _body(f"Unknown endpoint {n[:64]!r}", 104)), token, 404
    if isinstance(o, (dict, list)):
        o = _encode(o)
    if not isinstance(o, str):
        return _frame(REPLY, i, n, _body("The frame's o must be the payload as a JSON string", 100)), token, 400
    try:
        response = await endpoint.handler(_http_request(ws, endpoint.name, o.encode(), token))
    except KeygateError as exc:
        response = replies.error(exc)
    except Exception as exc:  # as over HTTP: a fault is logged, and the client gets no stack trace
        log.error("internal error on WebSocket frame %s: %s", endpoint.name, type(exc).__name__, exc_info=exc)
        return _frame(REPLY, i, n, _body("Server Error", 102)), token, 500
    body = bytes(response.body)
    if endpoint.name.lower() in SIGN_IN and response.status_code == 200:
        token = json.loads(body).get("SessionToken") or token
    elif endpoint.name == "LogOut" and response.status_code == 200:
        token = None
    return _frame(REPLY, i, n, body.decode()), token, response.status_code


async def gateway(ws: WebSocket) -> None:
    await ws.accept()
    token: str | None = None
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:  # a binary frame: read it as UTF-8 text, as some clients send JSON that way
                text = (message.get("bytes") or b"").decode("utf-8", "replace")
            if len(text) > MAX_FRAME:
                await ws.send_text(_frame(ERROR, 0, "", _body(f"Frame larger than {MAX_FRAME} bytes", 100)))
                observe_frame(413, 0.0)
                continue
            try:
                frame = json.loads(text)
            except (ValueError, RecursionError):
                await ws.send_text(_frame(ERROR, 0, "", _body("The frame is not valid JSON", 100)))
                observe_frame(400, 0.0)
                continue
            if not isinstance(frame, dict):
                await ws.send_text(_frame(ERROR, 0, "", _body("A frame is a JSON object: {\"m\":0,\"i\":<number>,\"n\":\"<Endpoint>\",\"o\":\"<payload>\"}", 100)))
                observe_frame(400, 0.0)
                continue
            started = time.perf_counter()
            reply, token, status = await _answer(ws, frame, token)
            await ws.send_text(reply)
            observe_frame(status, time.perf_counter() - started)
    except WebSocketDisconnect:
        return


def install_websocket(app: FastAPI) -> None:
    for path in PATHS:
        app.add_api_websocket_route(path, gateway, name=f"apex_ws{path.replace('/', '_')}")
