"""``keygate serve`` keeps an idle connection open longer than the clients and proxies that reuse it.

uvicorn closes an idle keep-alive connection after 5 s unless told otherwise, and httpx (the SDK's
transport) reuses one for up to 5 s: a client calling every five seconds then sends its request
just as the server closes the connection, and gets no answer at all ("Server disconnected without
sending a response", seen in CI). ``KEYGATE_KEEP_ALIVE_SECONDS`` (default 65, above the 60 s of
nginx's upstream ``keepalive_timeout`` and of AWS ALB) is that idle time.

Each test speaks HTTP/1.1 on one raw socket to a real server process, so what is measured is the
connection itself, not a client's reconnect.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from keygate.config import Settings
from support import Server, start_server, stop_server

PING = b"GET /AP/Ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def _server(tmp_path: Path, master_key: str, extra: dict[str, str], args: tuple[str, ...] = ()) -> Server:
    settings = Settings(data_dir=tmp_path, database_url=f"sqlite+aiosqlite:///{tmp_path / 'keygate.db'}",
                        master_key=master_key)
    return start_server(settings, extra, args)


def _connect(server: Server) -> socket.socket:
    host, port = server.base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def _exchange(sock: socket.socket) -> bytes:
    """Send one Ping and read its whole reply (headers and Content-Length bytes); b"" if the server closed."""
    try:
        sock.sendall(PING)
    except OSError:
        return b""
    data = b""
    while b"\r\n\r\n" not in data:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return b""
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


@pytest.mark.parametrize("args", [(), ("--workers", "2")], ids=["one process", "two workers"])
def test_a_connection_idle_for_six_seconds_still_answers(tmp_path: Path, master_key: str, args: tuple[str, ...]) -> None:
    server = _server(tmp_path, master_key, {}, args)
    try:
        with _connect(server) as sock:
            assert _exchange(sock).startswith(b"HTTP/1.1 200")
            time.sleep(6.0)  # past uvicorn's own 5 s, and past httpx's 5 s reuse
            reply = _exchange(sock)
            assert reply.startswith(b"HTTP/1.1 200"), f"the idle connection was closed: {reply!r}"
    finally:
        stop_server(server)


def test_the_setting_is_the_idle_time(tmp_path: Path, master_key: str) -> None:
    server = _server(tmp_path, master_key, {"KEYGATE_KEEP_ALIVE_SECONDS": "1"})
    try:
        with _connect(server) as sock:
            assert _exchange(sock).startswith(b"HTTP/1.1 200")
            sock.settimeout(5)
            started = time.monotonic()
            assert sock.recv(1) == b"", "the server kept the idle connection"  # closed by the server
            assert time.monotonic() - started < 3
    finally:
        stop_server(server)

