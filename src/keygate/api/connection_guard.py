"""Connections that hold a server without sending requests: bounded per address, and in time.

uvicorn closes a connection only once it has answered on it and the connection then idles past the
keep-alive time. A connection that never sends a request, or sends one byte at a time (slowloris),
or never finishes its body, is held for ever. Each holds a file descriptor, and a process has a
fixed number of them: past that, ``accept()`` fails and every client, however legitimate, waits
for nothing. An attacker needs no account and no key for this, only sockets.

``GuardedHttpTools`` is uvicorn's httptools protocol with three bounds, checked as bytes arrive:

1. **Per address.** At most ``KEYGATE_MAX_CONNECTIONS_PER_ADDRESS`` open connections (HTTP and
   WebSocket) from one socket peer: an IPv4 address, or an IPv6 /64 (``domain.throttle.network_of``,
   as the throttle counts). One more is answered ``429`` with an APEX body and closed at once.
   Trusted proxies (``KEYGATE_TRUSTED_PROXIES``) are exempt: every client behind them shares their
   address, and the proxy bounds its own clients. The count is per process (each ``--workers``
   process keeps its own).
2. **Idle.** A new connection must start a request within ``KEYGATE_KEEP_ALIVE_SECONDS``, as a
   connection between requests must (uvicorn's own keep-alive timer covers only the latter).
3. **Slow.** A request, once its first byte has arrived, must arrive whole (line, headers and body)
   within ``KEYGATE_REQUEST_TIMEOUT_SECONDS``; otherwise the connection is closed.

``configure(settings)`` sets the bounds of this process before uvicorn makes its first connection:
``keygate serve`` calls it, and so does ``keygate.api.asgi`` at import, for each worker.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from http import HTTPStatus
from typing import Any, ClassVar

from starlette.responses import Response
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from keygate.api import replies
from keygate.api.wire import ClientAddress
from keygate.config import Settings
from keygate.domain.errors import TooManyRequests
from keygate.domain.throttle import network_of


def _wire(response: Response) -> bytes:
    """``response`` as the bytes of an HTTP/1.1 reply that closes its connection (written before any
    request was read, so without uvicorn)."""
    status = HTTPStatus(response.status_code)
    lines = [f"HTTP/1.1 {status.value} {status.phrase}".encode(),
             *(name + b": " + value for name, value in response.raw_headers), b"connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n" + bytes(response.body)


# The APEX refusal of any 429 (replies.error), sent to a connection past its address's bound.
TOO_MANY_CONNECTIONS = _wire(replies.error(TooManyRequests(
    1, "Too many open connections from your address; close some and try again")))


SWEEP_SECONDS = 0.25  # how often the time bounds are checked: each holds to within this


class _Bounds:
    """This process's bounds, the open connections of each address, and the connections to watch.

    The time bounds are checked by one sweep every ``SWEEP_SECONDS``, not by a timer per request:
    arming and cancelling a timer for every request would cost each request more than the check."""

    def __init__(self) -> None:
        self.per_address = 0  # 0: no bound
        self.idle_seconds = 65.0
        self.request_seconds = 10.0
        self.trusted = ClientAddress(())
        self.open: Counter[str] = Counter()
        self.watched: set[GuardedHttpTools] = set()
        self._sweep: asyncio.TimerHandle | None = None

    def configure(self, settings: Settings) -> None:
        self.per_address = settings.max_connections_per_address
        self.idle_seconds = float(settings.keep_alive_seconds)
        self.request_seconds = settings.request_timeout_seconds
        self.trusted = ClientAddress(settings.trusted_proxies)

    def slot_of(self, host: str | None) -> str | None:
        """What a connection from ``host`` counts against: its address (an IPv6 address: its /64), or
        None when it is not counted (no bound, a trusted proxy, a peer without an address)."""
        if not self.per_address or not host or self.trusted.is_trusted(host):
            return None
        return network_of(host)

    def watch(self, conn: GuardedHttpTools, loop: asyncio.AbstractEventLoop) -> None:
        self.watched.add(conn)
        if self._sweep is None:
            self._sweep = loop.call_later(SWEEP_SECONDS, self._check, loop)

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for conn in [c for c in self.watched if c.deadline is not None and c.deadline <= now]:
            conn.expire()
        self._sweep = loop.call_later(SWEEP_SECONDS, self._check, loop) if self.watched else None


BOUNDS = _Bounds()


def configure(settings: Settings) -> None:
    BOUNDS.configure(settings)


class GuardedHttpTools(HttpToolsProtocol):
    bounds: ClassVar[_Bounds] = BOUNDS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slot: str | None = None  # the address this connection counts against, while it does
        self.deadline: float | None = None  # loop time by which the next request must have begun / arrived

    # ----- the address's slot ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        b = self.bounds
        slot = b.slot_of(self.client[0] if self.client else None)
        if slot is not None:
            if b.open[slot] >= b.per_address:
                transport.write(TOO_MANY_CONNECTIONS)
                transport.close()
                return
            b.open[slot] += 1
            self._slot = slot
        self.deadline = self.loop.time() + b.idle_seconds  # a request must begin within the keep-alive time
        b.watch(self, self.loop)

    def _release(self) -> None:
        slot, self._slot = self._slot, None
        if slot is not None:
            left = self.bounds.open[slot] - 1
            if left > 0:
                self.bounds.open[slot] = left
            else:
                del self.bounds.open[slot]

    def connection_lost(self, exc: Exception | None) -> None:
        self.bounds.watched.discard(self)
        self._release()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        """The WebSocket protocol takes the transport, and with it this connection's slot: released
        when the WebSocket closes. Its own ping timeout bounds it in time."""
        self.bounds.watched.discard(self)
        super().handle_websocket_upgrade()
        ws = self.transport.get_protocol()
        ws_lost = ws.connection_lost

        def lost(exc: Exception | None) -> None:
            try:
                ws_lost(exc)
            finally:
                self._release()

        ws.connection_lost = lost  # type: ignore[method-assign]

    # ----- time bounds ----------------------------------------------------------------------
    def expire(self) -> None:
        self.deadline = None
        if not self.transport.is_closing():
            self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.deadline = self.loop.time() + self.bounds.request_seconds  # its first byte: all of it within this

    def on_message_complete(self) -> None:
        self.deadline = None  # answered next; after the answer, uvicorn's keep-alive time bounds the idle
        super().on_message_complete()
