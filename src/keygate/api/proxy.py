"""The outermost middleware: one client address and one scheme per HTTP request and WebSocket connection.

``ProxyHeaders`` asks ``ClientAddress`` who the client is (the socket peer, or what trusted proxies
say) and writes the answer into the ASGI scope: ``scope["client"]`` becomes the client's canonical
address and port, ``scope["scheme"]`` ``https``/``wss`` when a trusted proxy says the client used TLS
(``http``/``ws`` when it says it did not). Everything below reads the scope: the APEX handlers, the
WebSocket frames (which copy the connection's ``client``), forward auth, the console (its cookies are
``Secure`` and its redirects ``https`` behind a TLS-terminating proxy), throttling and the audit trail.
So they all see the same address, and none of them reads a forwarding header itself.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from keygate.api import replies
from keygate.api.wire import RESOLVED_KEY, ClientAddress, ConflictingForwarding

_SCHEMES = {("http", "http"): "http", ("http", "https"): "https", ("websocket", "http"): "ws", ("websocket", "https"): "wss"}


class ProxyHeaders:
    def __init__(self, app: ASGIApp, client_address: ClientAddress) -> None:
        self.app = app
        self.client_address = client_address

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        try:
            client, proto = self.client_address.resolve(scope)
        except ConflictingForwarding as exc:
            if kind == "http":
                await replies.error(exc)(scope, receive, send)
            else:
                await send({"type": "websocket.close", "code": 1008, "reason": exc.message[:120]})
            return
        scope = dict(scope, client=client)
        if proto is not None:
            scope["scheme"] = _SCHEMES[kind, proto]
        scope[RESOLVED_KEY] = True
        await self.app(scope, receive, send)
