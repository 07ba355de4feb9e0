"""What the ``window`` lease tests share (test_window_leases.py on SQLite, test_redis_window_leases.py
with Redis): a key of the default mode, signed calls with a fresh nonce, the servers started, and
the load a ``kill -9`` interrupts."""

from __future__ import annotations

import secrets
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx
import pytest

from keygate.config import Settings
from keygate.domain.iprules import IpAllowlist
from keygate.domain.replay import ReplayMode
from keygate.domain.signature import compute_signature
from keygate.service import Keygate
from keygate.service.principal import OPERATOR
from support import Server


@dataclass
class Key:
    user_id: int
    api_key: str
    secret: str

    def headers(self, nonce: int | str) -> dict[str, str]:
        n = str(nonce)
        return {"APIKey": self.api_key, "Signature": compute_signature(self.secret, n, self.user_id, self.api_key),
                "UserId": str(self.user_id), "Nonce": n}


async def new_key(settings: Settings) -> Key:
    """A user and a key created without a replay mode: the default, ``window``."""
    kg = Keygate(settings, serving=False)
    await kg.start(bootstrap_admin=False)
    try:
        user = await kg.users.create(OPERATOR, "t" + secrets.token_hex(4), secrets.token_urlsafe(16))
        made = await kg.keys.create(OPERATOR, user.user_id, frozenset(), IpAllowlist())
        assert made.key.replay_mode is ReplayMode.WINDOW
        return Key(user.user_id, made.key.api_key, made.secret)
    finally:
        await kg.close()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=32)) as c:
        yield c


async def call(client: httpx.AsyncClient, server: Server, key: Key, nonce: int | str, waking: bool = False) -> int:
    """The status of a signed call; ``waking``: a process just resumed may fail closed (503) until its
    change listener has caught up, a refusal too (answered 401 here)."""
    r = await client.post(server.base_url + "/AP/GetUserPermissions", headers=key.headers(nonce))
    if waking and r.status_code == 503:
        return 401
    assert r.status_code in (200, 401), r.text
    return r.status_code


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    """Server processes a test starts; killed at its end (woken first, if a test stopped one)."""
    made: list[Server] = []
    yield made
    for s in made:
        if s.process.poll() is None:
            s.process.send_signal(signal.SIGCONT)
            s.process.kill()
            s.process.wait()


class Micros:
    """Microsecond timestamps, strictly increasing, as some clients send."""

    def __init__(self) -> None:
        self.last = 0

    def __call__(self) -> int:
        self.last = max(time.time_ns() // 1000, self.last + 1)
        return self.last


async def load_until_killed(client: httpx.AsyncClient, victim: Server, key: Key, micros: Micros, answered: list[int]) -> None:
    """One client in a tight loop of signed calls on ``victim`` until it dies; ``answered``: the nonces it accepted.

    One client: microsecond nonces from concurrent clients, delayed by more than a second on a loaded
    machine, would arrive more than 10^6 below the highest and make the key random-style
    (domain.replay), which no process leases: the test would then prove nothing."""
    while victim.process.poll() is None:
        n = micros()
        try:
            if await call(client, victim, key, n) == 200:
                answered.append(n)
        except httpx.HTTPError:
            return
