"""The APEX WebSocket gateway: the same endpoints, carried in frames.

A frame is ``{"m": 0, "i": <sequence>, "n": "<Endpoint>", "o": "<payload as a JSON string>"}``; the
reply echoes ``i`` and ``n`` with ``m: 1`` and the reply body as a JSON string in ``o`` (``m: 5``
for a frame that cannot be read at all). Each frame runs through the very handler that serves the
HTTP endpoint, so the rules are identical. A successful ``AuthenticateUser``, ``Authenticate``,
``WebAuthenticateUser`` or ``Authenticate2FA`` on the connection makes its session token the
connection's own: later frames need no ``aptoken``, as in APEX. Nothing is sent unsolicited.
"""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.websockets import WebSocket, WebSocketDisconnect

from keygate.api import replies
from keygate.api.endpoints import ENDPOINTS
from keygate.api.metrics import observe_frame
from keygate.api.middleware import CONTEXT_KEY
from keygate.domain.errors import KeygateError

PATHS = ("/WSGateway", "/WSGateway/", "/ws", "/ws/")
MAX_FRAME = 65536
SIGN_IN = {"authenticateuser", "authenticate", "webauthenticateuser", "authenticate2fa"}
REQUEST, REPLY, ERROR = 0, 1, 5


def _frame_error(i: object, n: object, message: str) -> dict[str, Any]:
    body = {"result": False, "errormsg": message, "errorcode": 100, "detail": None}
    return {"m": ERROR, "i": i if isinstance(i, int) else 0, "n": n if isinstance(n, str) else "", "o": json.dumps(body)}


def _http_request(ws: WebSocket, name: str, payload: bytes, token: str | None) -> Request:
    """The handler's view of one frame: a POST with the payload as its body."""
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    if token:
        headers.append((b"aptoken", token.encode()))
    scope = {
        "type": "http", "http_version": "1.1", "method": "POST", "scheme": "http", "path": f"/AP/{name}",
        "raw_path": f"/AP/{name}".encode(), "query_string": b"", "root_path": "", "headers": headers,
        "client": ws.scope.get("client"), "server": ws.scope.get("server"), "app": ws.scope["app"],
        CONTEXT_KEY: ws.scope[CONTEXT_KEY],
    }
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": payload, "more_body": False}

    return Request(scope, receive)


async def _answer(ws: WebSocket, frame: object, token: str | None) -> tuple[dict[str, Any], str | None, int]:
    """The reply frame, the connection's token after it, and the HTTP status of the answer (for the metrics)."""
    if not isinstance(frame, dict) or frame.get("m") != REQUEST or not isinstance(frame.get("n"), str):
        return _frame_error(frame.get("i") if isinstance(frame, dict) else 0, None,
                            'A frame is {"m": 0, "i": <number>, "n": "<Endpoint>", "o": "<JSON payload>"}'), token, 400
    i, n, o = frame.get("i"), frame["n"], frame.get("o", "")
    endpoint = {name.lower(): ep for name, ep in ENDPOINTS.items()}.get(n.lower())
    if endpoint is None:
        body = {"result": False, "errormsg": f"Unknown endpoint {n[:64]!r}", "errorcode": 104, "detail": None}
        return {"m": REPLY, "i": i, "n": n, "o": json.dumps(body)}, token, 404
    if isinstance(o, (dict, list)):
        o = json.dumps(o)
    if not isinstance(o, str):
        return _frame_error(i, n, "The frame's o must be the payload as a JSON string"), token, 400
    try:
        response = await endpoint.handler(_http_request(ws, endpoint.name, o.encode(), token))
    except KeygateError as exc:
        response = replies.error(exc)
    body = bytes(response.body)
    if endpoint.name.lower() in SIGN_IN and response.status_code == 200:
        token = json.loads(body).get("SessionToken") or token
    elif endpoint.name == "LogOut" and response.status_code == 200:
        token = None
    return {"m": REPLY, "i": i, "n": endpoint.name, "o": body.decode()}, token, response.status_code


async def gateway(ws: WebSocket) -> None:
    await ws.accept()
    token: str | None = None
    try:
        while True:
            text = await ws.receive_text()
            if len(text) > MAX_FRAME:
                await ws.send_json(_frame_error(0, None, f"Frame larger than {MAX_FRAME} bytes"))
                observe_frame(413, 0.0)
                continue
            try:
                frame = json.loads(text)
            except ValueError:
                await ws.send_json(_frame_error(0, None, "The frame is not valid JSON"))
                observe_frame(400, 0.0)
                continue
            started = time.perf_counter()
            reply, token, status = await _answer(ws, frame, token)
            await ws.send_json(reply)
            observe_frame(status, time.perf_counter() - started)
    except WebSocketDisconnect:
        return


def install_websocket(app: FastAPI) -> None:
    for path in PATHS:
        app.add_api_websocket_route(path, gateway, name=f"apex_ws{path.replace('/', '_')}")
