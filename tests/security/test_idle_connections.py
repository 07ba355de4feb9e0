"""Connections that hold the server without sending requests (api/connection_guard.py).

A real ``keygate serve`` whose process may open 256 files, as a small soft limit allows. An attacker
needs no account for this attack: it opens sockets from many local addresses (any 127.0.0.x) and
sends nothing, or a request one byte at a time. Meanwhile a trader signs in and calls on a new
connection every fifth of a second, as a bot that reconnects does. Before the guard, the attacker's
idle sockets took every file the server could open: ``accept()`` failed and the trader waited for
nothing.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import resource
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from keygate.api.connection_guard import BOUNDS
from keygate.config import Settings
from keygate.domain.signature import compute_signature
from support import Server, free_port, stop_server, wait_until_serving

OPEN_FILES = 256
PER_ADDRESS = 8
ATTACKERS = [f"127.0.0.{i}" for i in range(2, 22)]  # 20 addresses x 8 = 160 connections, well under 256
TRADER = "127.0.0.1"


def _limit_open_files() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES))


def _serve(tmp_path: Path, extra: dict[str, str], args: tuple[str, ...] = (), limit: Any = _limit_open_files,
           command: tuple[str, ...] = ("-m", "keygate", "serve")) -> Server:
    port = int(extra.get("KEYGATE_PORT") or free_port())
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYGATE_")}
    env.update({"KEYGATE_DATA_DIR": str(tmp_path / "data"), "KEYGATE_HOST": "127.0.0.1", "KEYGATE_PORT": str(port),
                "KEYGATE_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(), "KEYGATE_LOG_LEVEL": "warning",
                "KEYGATE_DEFAULT_REPLAY_MODE": "compatible", "KEYGATE_THROTTLE_IP_FAILURES": "1000000",
                "KEYGATE_MAX_CONNECTIONS_PER_ADDRESS": str(PER_ADDRESS), "KEYGATE_KEEP_ALIVE_SECONDS": "3",
                "KEYGATE_REQUEST_TIMEOUT_SECONDS": "1", **extra})
    log = tmp_path / "server.log"
    proc = subprocess.Popen([sys.executable, *command, *args], env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, text=True, preexec_fn=limit)
    base = f"http://127.0.0.1:{port}"
    wait_until_serving(proc, base, log)
    return Server(base, proc, env, log)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Server]:
    srv = _serve(tmp_path, {})
    yield srv
    stop_server(srv)


def _port(server: Server) -> int:
    return int(server.base_url.rsplit(":", 1)[1])


def _connect(port: int, source: str) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))


def _closed_by_server(sock: socket.socket, within: float) -> float | None:
    """Seconds until the server closed ``sock`` (read end of stream), or None if it stayed open."""
    sock.settimeout(within)
    started = time.monotonic()
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return time.monotonic() - started


def _trader(served: Server) -> tuple[str, dict[str, str]]:
    """A user with an API key, made by the CLI; the signed headers of a compatible key."""
    env = {**served.env, "KEYGATE_PASSWORD": "Trader-pass-" + secrets.token_hex(6)}
    name = "trader" + secrets.token_hex(3)
    run = subprocess.run([sys.executable, "-m", "keygate", "user", "create", name], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    made = subprocess.run([sys.executable, "-m", "keygate", "key", "create", "--user", name, "--replay-mode", "compatible",
                           "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stdout + made.stderr
    key = json.loads(made.stdout)
    uid, api_key, secret = int(key["UserId"]), key["APIKey"], key["APISecret"]
    return name, {"APIKey": api_key, "UserId": str(uid), "Nonce": "1", "Signature": compute_signature(secret, "1", uid, api_key)}


class Attacker:
    """Keeps as many idle sockets open from each address as the server lets it: a closed one is
    opened again at once. Counts what it holds, and the 429 answers it got."""

    def __init__(self, port: int, addresses: list[str], per_address: int) -> None:
        self.port, self.addresses, self.per_address = port, addresses, per_address
        self.held: dict[str, list[socket.socket]] = {a: [] for a in addresses}
        self.refused = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            for address in self.addresses:
                socks = self.held[address]
                for s in list(socks):  # drop the ones the server closed
                    s.setblocking(False)
                    try:
                        if s.recv(65536, socket.MSG_PEEK) == b"":
                            socks.remove(s)
                            s.close()
                        elif s.recv(65536).startswith(b"HTTP/1.1 429"):
                            self.refused += 1
                    except BlockingIOError:
                        pass
                    except OSError:
                        socks.remove(s)
                        s.close()
                while len(socks) < self.per_address and not self.stop.is_set():
                    try:
                        socks.append(_connect(self.port, address))
                    except OSError:
                        break
            time.sleep(0.2)

    def __enter__(self) -> "Attacker":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)
        for socks in self.held.values():
            for s in socks:
                s.close()


def test_idle_sockets_from_many_addresses_do_not_lock_a_trader_out(served: Server) -> None:
    _, signed = _trader(served)
    with Attacker(_port(served), ATTACKERS, per_address=40):  # 800 sockets wanted: more than the server's 256 files
        time.sleep(2)  # the attack in place
        failures: list[str] = []
        ended = time.monotonic() + 6
        calls = 0
        while time.monotonic() < ended:
            try:  # a new connection each time, as a bot that reconnects; from the trader's own address
                with httpx.Client(timeout=3, transport=httpx.HTTPTransport(local_address=TRADER)) as c:
                    token = c.post(served.base_url + "/AP/AuthenticateUser", headers=signed).json()["SessionToken"]
                    r = c.post(served.base_url + "/AP/GetUserInfo", headers={"aptoken": token})
                    if r.status_code != 200:
                        failures.append(f"{r.status_code} {r.text[:100]}")
            except (httpx.HTTPError, KeyError) as exc:
                failures.append(repr(exc))
            calls += 1
            time.sleep(0.2)
    assert calls >= 10 and not failures, (calls, failures[:5], served.log()[-2000:])


def test_one_address_gets_its_share_and_a_429_past_it(served: Server) -> None:
    held = [_connect(_port(served), "127.0.0.30") for _ in range(PER_ADDRESS)]
    try:
        time.sleep(0.3)
        one_more = _connect(_port(served), "127.0.0.30")
        one_more.settimeout(5)
        reply = b""
        while chunk := one_more.recv(65536):
            reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 429"), reply
        assert json.loads(body) == {"result": False, "errormsg": "Too many open connections from your address; close "
                                    "some and try again", "errorcode": 101, "detail": None}
        # another address is not affected, and the address gets a connection again once one closes
        with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.31")) as c:
            assert c.get(served.base_url + "/AP/Ping").status_code == 200
        held.pop().close()
        time.sleep(0.3)
        with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.30")) as c:
            assert c.get(served.base_url + "/AP/Ping").status_code == 200
    finally:
        for s in held:
            s.close()


def test_a_socket_that_sends_nothing_is_closed_after_the_keep_alive_time(served: Server) -> None:
    with _connect(_port(served), "127.0.0.40") as sock:
        closed = _closed_by_server(sock, within=8)
    assert closed is not None and 2.5 < closed < 5, closed  # KEYGATE_KEEP_ALIVE_SECONDS=3


def test_a_request_sent_a_byte_at_a_time_is_closed_after_the_request_timeout(served: Server) -> None:
    with _connect(_port(served), "127.0.0.41") as sock:
        started = time.monotonic()
        sock.sendall(b"GET /AP/Ping HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        closed_after = None
        for byte in b"X-Slow: " + b"a" * 60:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed_after = time.monotonic() - started
                break
            sock.settimeout(0.2)
            try:
                if sock.recv(65536) == b"":
                    closed_after = time.monotonic() - started
                    break
            except TimeoutError:
                pass
    assert closed_after is not None and closed_after < 3, closed_after  # KEYGATE_REQUEST_TIMEOUT_SECONDS=1


def test_a_slow_body_is_closed_after_the_request_timeout(served: Server) -> None:
    with _connect(_port(served), "127.0.0.42") as sock:
        sock.sendall(b"POST /AP/Ping HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
        closed = _closed_by_server(sock, within=8)
    assert closed is not None and closed < 3, closed


def test_a_trusted_proxy_is_not_bounded(tmp_path: Path) -> None:
    srv = _serve(tmp_path, {"KEYGATE_TRUSTED_PROXIES": "127.0.0.50"})
    try:
        held = [_connect(_port(srv), "127.0.0.50") for _ in range(3 * PER_ADDRESS)]
        try:
            for s in held:
                s.sendall(b"GET /AP/Ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            for s in held:
                s.settimeout(5)
                assert s.recv(65536).startswith(b"HTTP/1.1 200"), "a proxy's connection was refused"
        finally:
            for s in held:
                s.close()
    finally:
        stop_server(srv)


def test_every_worker_of_a_multi_worker_server_is_guarded(tmp_path: Path) -> None:
    """``--workers 2``: uvicorn imports the guard in each worker, and ``keygate.api.asgi`` gives it the
    settings (plain uvicorn never closes a socket that sends nothing; these close after 3 s)."""
    srv = _serve(tmp_path, {}, ("--workers", "2"))
    try:
        socks = [_connect(_port(srv), "127.0.0.60") for _ in range(6)]  # spread over both workers
        try:
            started = time.monotonic()
            for s in socks:
                assert _closed_by_server(s, within=max(0.1, started + 8 - time.monotonic())) is not None
            assert 2.5 < time.monotonic() - started < 6
        finally:
            for s in socks:
                s.close()
    finally:
        stop_server(srv)


def _soft_256_hard_1024() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 1024))


def test_serve_raises_its_open_files_limit_to_the_hard_limit(tmp_path: Path) -> None:
    srv = _serve(tmp_path, {}, limit=_soft_256_hard_1024)
    try:
        limits = Path(f"/proc/{srv.process.pid}/limits").read_text()
        line = next(ln for ln in limits.splitlines() if ln.startswith("Max open files"))
        assert line.split()[3:5] == ["1024", "1024"], line
    finally:
        stop_server(srv)


def test_what_a_connection_counts_against() -> None:
    """An IPv4 address, an IPv6 /64 (as the throttle counts), an IPv4-mapped IPv6 address as its IPv4
    address; nothing for a trusted proxy or with the bound off."""
    saved = (BOUNDS.per_address, BOUNDS.trusted, BOUNDS.idle_seconds, BOUNDS.request_seconds)
    try:
        BOUNDS.configure(Settings(max_connections_per_address=5, trusted_proxies=("10.0.0.0/8",)))
        assert BOUNDS.slot_of("192.0.2.7") == "192.0.2.7"
        assert BOUNDS.slot_of("2001:db8:1:2:aaaa::1") == BOUNDS.slot_of("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
        assert BOUNDS.slot_of("2001:db8:1:3::1") != BOUNDS.slot_of("2001:db8:1:2::1")
        assert BOUNDS.slot_of("::ffff:192.0.2.7") == "192.0.2.7"
        assert BOUNDS.slot_of("10.1.2.3") is None and BOUNDS.slot_of(None) is None
        BOUNDS.configure(Settings(max_connections_per_address=0))
        assert BOUNDS.slot_of("192.0.2.7") is None
    finally:
        BOUNDS.per_address, BOUNDS.trusted, BOUNDS.idle_seconds, BOUNDS.request_seconds = saved


def test_uvicorn_run_alone_keeps_the_guard_with_its_http_option(tmp_path: Path) -> None:
    """``uvicorn keygate.api.asgi:app --http keygate.api.connection_guard:GuardedHttpTools`` (docs/deployment.md)."""
    port = free_port()
    (tmp_path / "data").mkdir()
    subprocess.run([sys.executable, "-m", "keygate", "init"], env={**os.environ, "KEYGATE_DATA_DIR": str(tmp_path / "data")},
                   capture_output=True, timeout=60, check=True)
    srv = _serve(tmp_path, {"KEYGATE_PORT": str(port), "KEYGATE_MASTER_KEY": ""},
                 command=("-m", "uvicorn", "keygate.api.asgi:app", "--host", "127.0.0.1", "--port", str(port),
                          "--http", "keygate.api.connection_guard:GuardedHttpTools"))
    try:
        with _connect(_port(srv), "127.0.0.61") as sock:
            closed = _closed_by_server(sock, within=8)
        assert closed is not None and 2.5 < closed < 5, closed
    finally:
        stop_server(srv)


def test_websocket_connections_count_against_their_address_until_they_close(served: Server) -> None:
    from websockets.sync.client import connect as ws_connect

    address = "127.0.0.70"
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(ws_connect(f"ws://127.0.0.1:{_port(served)}/WSGateway",
                                                  sock=_connect(_port(served), address))) for _ in range(PER_ADDRESS)]
        for ws in sockets:  # each one is a live APEX WebSocket
            ws.send(json.dumps({"m": 0, "i": 2, "n": "Ping", "o": "{}"}))
            assert json.loads(ws.recv(timeout=5))["n"] == "Ping"
        time.sleep(6)  # past the keep-alive time (3 s): a WebSocket is not an idle HTTP connection
        with _connect(_port(served), address) as extra:
            extra.settimeout(5)
            assert extra.recv(65536).startswith(b"HTTP/1.1 429")
        sockets.pop().close()
        time.sleep(0.5)
        with httpx.Client(transport=httpx.HTTPTransport(local_address=address)) as c:
            assert c.get(served.base_url + "/AP/Ping").status_code == 200
        for ws in sockets:  # still open
            ws.send(json.dumps({"m": 0, "i": 4, "n": "Ping", "o": "{}"}))
            assert json.loads(ws.recv(timeout=5))["n"] == "Ping"
