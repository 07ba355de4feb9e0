"""Attackers and victims against real server processes, each from its own loopback address.

On Linux every 127.0.0.0/8 address is the local host, and a client can bind any of them as its source
address, so one test can play an attacker spread over many addresses and a victim at home.
"""

from __future__ import annotations

import secrets
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pyotp

from keygate.config import Settings
from keygate.domain.signature import compute_signature
from support import Server, redis_available, start_server, stop_server

# Realistic, fast thresholds: a name backs off after 3 failures and locks after 6.
ATTACK_ENV = {
    "KEYGATE_THROTTLE_IP_FAILURES": "20",
    "KEYGATE_THROTTLE_KEY_FAILURES": "10",
    "KEYGATE_THROTTLE_USER_FAILURES": "3",
    "KEYGATE_THROTTLE_WINDOW_SECONDS": "900",
    "KEYGATE_LOCKOUT_FAILURES": "6",
    "KEYGATE_LOCKOUT_SECONDS": "3600",
    "KEYGATE_DEFAULT_REPLAY_MODE": "compatible",
}


def shared_state_env(settings: Settings) -> dict[str, str]:
    """PostgreSQL runs with Redis (the multi-node setup); SQLite keeps its state in the database."""
    if settings.resolved_database_url.startswith("postgresql") and redis_available():
        from support import REDIS_URL

        return {"KEYGATE_REDIS_URL": REDIS_URL}
    return {}


@contextmanager
def servers(settings: Settings, count: int = 1, **env: str) -> Iterator[list[Server]]:
    started: list[Server] = []
    try:
        for _ in range(count):
            started.append(start_server(settings, {**ATTACK_ENV, **shared_state_env(settings), **env}))
        yield started
    finally:
        for srv in started:
            stop_server(srv)


def client(server: Server, address: str, **kwargs: object) -> httpx.AsyncClient:
    """A client of ``server`` whose connections come from ``address`` (any 127.x.y.z)."""
    transport = httpx.AsyncHTTPTransport(local_address=address)
    return httpx.AsyncClient(transport=transport, base_url=server.base_url, timeout=60, **kwargs)  # type: ignore[arg-type]


def addresses(block: int, count: int, start: int = 10) -> list[str]:
    """``count`` attacker addresses in 127.<block>.0.0/16, one test's own block."""
    return [f"127.{block}.{(start + i) // 250}.{(start + i) % 250 + 1}" for i in range(count)]


def signed(api_key: str, secret: str, user_id: int, nonce: str | None = None) -> dict[str, str]:
    nonce = nonce or str(time.time_ns() // 1000 + secrets.randbelow(1000))
    return {"APIKey": api_key, "Signature": compute_signature(secret, nonce, user_id, api_key), "UserId": str(user_id), "Nonce": nonce}


def wrong_signature(api_key: str, user_id: int) -> dict[str, str]:
    return {"APIKey": api_key, "Signature": secrets.token_hex(32), "UserId": str(user_id), "Nonce": str(secrets.randbelow(10**9))}


def code_at(secret: str, step: int) -> str:
    return pyotp.TOTP(secret).at(step * 30)


def current_step() -> int:
    return int(time.time() // 30)


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000
