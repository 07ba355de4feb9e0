"""Test support shared by every folder: services that may be missing, servers, settings.

Import it as ``from support import ...``: unlike ``conftest``, the name is unique in the test tree.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from keygate.config import Settings
from keygate.service import Keygate

# The protocol reference's test vector (shared/reference/apex-protocol.md).
TEST_VECTOR = {
    "secret": "4b3e7c0a9f1d2e8b6a5c4d3e2f1a0b9c",
    "nonce": "2277045681",
    "user_id": "42",
    "api_key": "8d4f1a2b3c5e6f708192a3b4c5d6e7f8",
    "signature": "d49473077df88f71cbae6e0e59c560542afd01bc9feb2520dcf24fd33c1209fa",
}

PG_ADMIN_DSN = os.environ.get("KEYGATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


REDIS_URL = os.environ.get("KEYGATE_TEST_REDIS", "redis://127.0.0.1:6379/0")


CHROMIUM = "/usr/bin/chromium"


IN_CI = os.environ.get("CI", "").lower() == "true"


ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def need(available: bool, what: str) -> None:
    """Skip when ``what`` is missing on a developer's machine; fail under CI."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{what} is required under CI=true but is not available")
    pytest.skip(f"{what} is not available on this machine")


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def pg_available() -> bool:
    return _port_open("127.0.0.1", 5432)


def redis_available() -> bool:
    return _port_open("127.0.0.1", 6379)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _psql(sql: str, dbname: str = "test") -> None:
    import asyncio

    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(PG_ADMIN_DSN.rsplit("/", 1)[0] + "/" + dbname)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a server process use ``settings``."""
    return {
        "KEYGATE_DATA_DIR": str(settings.data_dir),
        "KEYGATE_DATABASE_URL": settings.resolved_database_url,
        "KEYGATE_MASTER_KEY": settings.master_key or "",
        "KEYGATE_DEFAULT_REPLAY_MODE": settings.default_replay_mode,
        "KEYGATE_THROTTLE_IP_FAILURES": str(settings.throttle_ip_failures),
        "KEYGATE_THROTTLE_KEY_FAILURES": str(settings.throttle_key_failures),
        "KEYGATE_THROTTLE_USER_FAILURES": str(settings.throttle_user_failures),
        "KEYGATE_LOCKOUT_FAILURES": str(settings.lockout_failures),
        "KEYGATE_LOCKOUT_SECONDS": str(settings.lockout_seconds),
        "KEYGATE_REDIS_URL": settings.redis_url or "",
        "KEYGATE_REDIS_NAMESPACE": settings.redis_namespace,
    }


def unique_name(prefix: str = "user") -> str:
    return f"{prefix}{secrets.token_hex(5)}"


@dataclass
class NewUser:
    user_id: int
    username: str
    password: str


@dataclass
class Server:
    base_url: str
    process: subprocess.Popen[str]
    env: dict[str, str]
    output: Path

    def log(self) -> str:
        return self.output.read_text()


def start_server(settings: Settings, extra_env: dict[str, str] | None = None, args: Sequence[str] = (),
                 ca_file: Path | None = None) -> Server:
    """Run ``python -m keygate serve ARGS`` as a real process on a free port and wait until it answers.

    With a certificate (``KEYGATE_TLS_CERT_FILE`` in ``extra_env``, or ``--tls-cert`` in ``args``) the
    server speaks HTTPS, and the readiness probe verifies it against ``ca_file`` (default: the
    certificate itself, as for a self-signed one).
    """
    port = free_port()
    env = {
        **os.environ,
        **settings_env(settings),
        "KEYGATE_PORT": str(port),
        "KEYGATE_HOST": "127.0.0.1",
        "KEYGATE_LOG_LEVEL": "warning",
        **(extra_env or {}),
    }
    output = Path(settings.data_dir) / f"server-{port}.log"
    out = output.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "keygate", "serve", *args], env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    cert = env.get("KEYGATE_TLS_CERT_FILE") or (args[list(args).index("--tls-cert") + 1] if "--tls-cert" in args else "")
    verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=str(ca_file or cert)) if cert else True
    base_url = f"{'https' if cert else 'http'}://127.0.0.1:{port}"
    wait_until_serving(proc, base_url, output, verify)
    return Server(base_url, proc, env, output)


def wait_until_serving(proc: subprocess.Popen[str], base_url: str, output: Path,
                       verify: ssl.SSLContext | bool = True) -> None:
    """Wait (at most 30 s) until the server process answers ``/AP/Ping``; its log in the error if not."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"keygate server exited early:\n{output.read_text()}")
        try:
            if httpx.get(f"{base_url}/AP/Ping", timeout=1, verify=verify).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"keygate server did not start:\n{output.read_text()}")


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()


def bootstrap_password(log: str) -> str | None:
    m = re.search(r"password: (\S+)", log)
    return m.group(1) if m else None


StrictFactory = Callable[..., Awaitable[Keygate]]
