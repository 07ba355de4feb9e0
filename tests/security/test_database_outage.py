"""A database that goes away: every authenticating path answers 503 with an APEX body, /readyz 503,
/healthz 200, and everything recovers when it returns, without a restart.

A real server process talks to PostgreSQL through a TCP proxy this test starts and stops.
"""

from __future__ import annotations

import base64
import secrets
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from outage_helpers import Caller, make_caller, probe, refused_as_unavailable, served, sign_in_everywhere, wait_for

from keygate.config import Settings
from keygate.service import Keygate
from support import _psql, free_port, need, pg_available, start_server, stop_server
from tcp_proxy import TcpProxy

MENTION = "database"
SHORT_TIMEOUTS = {"KEYGATE_DATABASE_CONNECT_TIMEOUT_SECONDS": "1", "KEYGATE_DATABASE_STATEMENT_TIMEOUT_SECONDS": "2"}
MASTER_KEY = base64.b64encode(secrets.token_bytes(32)).decode()


@pytest.fixture
def pg_database() -> Iterator[str]:
    need(pg_available(), "PostgreSQL at 127.0.0.1:5432")
    name = f"keygate_outage_{uuid.uuid4().hex[:10]}"
    _psql(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        _psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    p = TcpProxy("127.0.0.1", 5432).start()
    yield p
    p.close()


def _settings(tmp_path: Path, url: str) -> Settings:
    return Settings(
        data_dir=tmp_path, database_url=url, master_key=MASTER_KEY,
        default_replay_mode="increasing", throttle_ip_failures=1_000_000, throttle_key_failures=1_000_000,
        throttle_user_failures=1_000_000, lockout_failures=100,
    )


async def _caller(settings: Settings) -> Caller:
    kg = Keygate(settings)
    await kg.start(bootstrap_admin=False)
    try:
        return await make_caller(kg, secrets.token_hex(3))
    finally:
        await kg.close()


def _readyz(http: httpx.Client) -> httpx.Response:
    return http.get("/readyz")


async def test_database_cut_then_restored(tmp_path: Path, pg_database: str, proxy: TcpProxy) -> None:
    direct = _settings(tmp_path, f"postgresql+asyncpg://postgres@127.0.0.1:5432/{pg_database}")
    caller = await _caller(direct)
    proxied = _settings(tmp_path, f"postgresql+asyncpg://postgres@127.0.0.1:{proxy.port}/{pg_database}")
    server = start_server(proxied, SHORT_TIMEOUTS)
    try:
        with httpx.Client(base_url=server.base_url, timeout=30) as http:
            sign_in_everywhere(http, server.base_url.replace("http://", "ws://") + "/WSGateway", caller)
            assert _readyz(http).json()["checks"] == {"database": "ok"}

            proxy.cut()  # the listener and every connection through it are gone: "connection refused"
            assert wait_for(lambda: http.post("/AP/GetUserInfo", headers={"aptoken": caller.token}).status_code == 503), \
                "a session call still succeeded long after the database went away"
            seen = probe(http, server.base_url, caller)
            assert not refused_as_unavailable(seen, MENTION), refused_as_unavailable(seen, MENTION)
            assert max(s.seconds for s in seen.values()) < 3, {p: round(s.seconds, 2) for p, s in seen.items()}
            said = " ".join(str(s.body) for s in seen.values())
            assert str(proxy.port) not in said and "127.0.0.1" not in said and "postgres" not in said
            ready = _readyz(http)
            assert ready.status_code == 503
            assert ready.json()["checks"]["database"] != "ok" and "database" in ready.json()["errormsg"]
            assert ready.json()["result"] is False and ready.json()["errorcode"] == 102
            assert http.get("/healthz").status_code == 200
            assert http.get("/AP/Ping").json() == {"msg": "PONG"}, "/AP/Ping stays as APEX clients know it"

            proxy.restore()
            assert wait_for(lambda: _readyz(http).status_code == 200), "/readyz did not recover"
            # The change log is read again within its interval (0.5 s on PostgreSQL): then every path serves.
            assert wait_for(lambda: http.post("/AP/GetUserInfo", headers={"aptoken": caller.token}).status_code == 200)
            seen = probe(http, server.base_url, caller)
            assert not served(seen), served(seen)
        log = server.log()
        assert "Traceback" not in log, log[-3000:]
        assert 1 <= log.count("database unavailable") <= 2  # the operator is told, not once per request
    finally:
        stop_server(server)
        if caller.ws is not None:
            caller.ws.close()


async def test_a_silent_database_fails_fast(tmp_path: Path, pg_database: str, proxy: TcpProxy) -> None:
    """A network that drops everything (no reset, no answer): requests answer 503 within the bounds."""
    direct = _settings(tmp_path, f"postgresql+asyncpg://postgres@127.0.0.1:5432/{pg_database}")
    caller = await _caller(direct)
    proxied = _settings(tmp_path, f"postgresql+asyncpg://postgres@127.0.0.1:{proxy.port}/{pg_database}")
    server = start_server(proxied, SHORT_TIMEOUTS)
    try:
        with httpx.Client(base_url=server.base_url, timeout=30) as http:
            assert http.post("/AP/AuthenticateUser", headers=caller.signed()).status_code == 200
            proxy.blackhole()
            started = time.monotonic()
            ready = _readyz(http)
            assert ready.status_code == 503 and "did not answer within 0.5 s" in ready.json()["checks"]["database"]
            assert time.monotonic() - started < 1.5
            for _ in range(3):
                started = time.monotonic()
                r = http.post("/AP/AuthenticateUser", headers=caller.signed())
                took = time.monotonic() - started
                assert r.status_code == 503 and r.json()["errorcode"] == 102, r.text
                # statement timeout (a pooled connection's ping) + connect timeout, and some slack
                assert took < 2 + 1 + 1.5, f"a request waited {took:.1f} s for a silent database"
            assert http.get("/healthz").status_code == 200
            proxy.restore()
            assert wait_for(lambda: http.post("/AP/AuthenticateUser", headers=caller.signed()).status_code == 200)
            assert _readyz(http).status_code == 200
    finally:
        stop_server(server)


HAPROXY_BACKEND = """
backend keygate
    option httpchk
    http-check send meth GET uri /readyz
    http-check expect status 200
    server node1 127.0.0.1:{port} check inter 2s fall 2 rise 2
"""  # docs/deployment.md, "Health checks and outages", with this test's address


async def test_haproxy_drains_a_node_whose_database_is_away(tmp_path: Path, pg_database: str, proxy: TcpProxy) -> None:
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    need(Path(haproxy).exists(), "HAProxy (Debian package haproxy)")
    proxied = _settings(tmp_path, f"postgresql+asyncpg://postgres@127.0.0.1:{proxy.port}/{pg_database}")
    server = start_server(proxied)
    front = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        "defaults\n    mode http\n    timeout connect 2s\n    timeout client 10s\n    timeout server 10s\n"
        f"frontend public\n    bind 127.0.0.1:{front}\n    default_backend keygate\n"
        + HAPROXY_BACKEND.format(port=server.base_url.rsplit(":", 1)[1])
    )
    balancer = subprocess.Popen([haproxy, "-db", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{front}", timeout=10) as http:
            def ping() -> int:
                try:
                    return http.get("/AP/Ping").status_code
                except httpx.HTTPError:
                    return 0
            assert wait_for(lambda: ping() == 200, 15), "HAProxy never sent traffic to the node"
            proxy.cut()
            assert wait_for(lambda: ping() == 503, 15), "HAProxy kept a node whose /readyz said 503"
            assert httpx.get(f"{server.base_url}/healthz").status_code == 200  # the node itself lives on
            proxy.restore()
            assert wait_for(lambda: ping() == 200, 15), "HAProxy did not take the recovered node back"
    finally:
        balancer.terminate()
        balancer.wait(timeout=10)
        stop_server(server)
