"""A TCP proxy a test starts between a server and its database, to take the database away and back.

It runs its own asyncio loop in a thread, so it keeps forwarding while the test blocks on
synchronous HTTP calls. ``cut()`` closes the listener and every forwarded connection (clients then
see "connection refused" and broken sockets, as when a database host goes down); ``blackhole()``
keeps accepting connections and forwards nothing, on new and existing connections alike (a database
host that hangs, or a network that drops packets); ``restore()`` forwards again, on the same port.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any

from support import free_port


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._forwarding = True
        self.accepted = 0

    # ----- control, from the test's thread --------------------------------------------------------
    def start(self) -> "TcpProxy":
        self._thread.start()
        self._call(self._listen())
        return self

    def cut(self) -> None:
        """Stop forwarding: close the listener and every connection through it."""
        self._call(self._close_all())

    def blackhole(self) -> None:
        """Forward nothing more, on existing and new connections; keep them all open and silent."""
        self._forwarding = False
        if self._server is None:
            self._call(self._listen())

    def restore(self) -> None:
        """Forward again, on the same port."""
        self._call(self._close_all())
        self._forwarding = True
        self._call(self._listen())

    def close(self) -> None:
        self._call(self._close_all())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    # ----- the proxy, on its own loop ------------------------------------------------------------
    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)

    async def _close_all(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.add(writer)
        if not self._forwarding:
            return  # held open, silent, until cut() or restore()
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.add(up_writer)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if self._forwarding:  # a blackholed proxy drops what it reads, like a dead network
                    writer.write(data)
                    await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.transport.abort()
            self._writers.discard(writer)
