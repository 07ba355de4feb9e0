"""Fixtures for in-process API tests: the ASGI app on the session's service, and a client per test.

Each client has its own made-up address, so sessions (bound to the client IP) and any failure
counters of one test never meet another's.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import httpx
import pytest
from api_helpers import SharedUser
from fastapi import FastAPI

from keygate.api import create_app
from keygate.domain.errors import NotFound
from keygate.service import Keygate
from keygate.service.principal import OPERATOR


@pytest.fixture(scope="session")
def api_app(kg: Keygate) -> FastAPI:
    return create_app(keygate=kg)


def random_client_ip() -> str:
    return f"198.18.{secrets.randbelow(256)}.{secrets.randbelow(254) + 1}"


@pytest.fixture
def client_ip() -> str:
    return random_client_ip()


@pytest.fixture
async def client(api_app: FastAPI, client_ip: str) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=api_app, client=(client_ip, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
        yield c


async def _shared(kg: Keygate, prefix: str, email: str = "") -> SharedUser:
    password = secrets.token_urlsafe(16)
    user = await kg.users.create(OPERATOR, f"{prefix}{secrets.token_hex(5)}", password, email)
    return SharedUser(user.user_id, user.username, password)


@pytest.fixture(scope="session")
async def reader(kg: Keygate) -> SharedUser:
    """A user that tests sign in as and add keys to, but never lock, enrol in 2FA or list exactly.

    Sharing it saves an Argon2 hash per test; tests that change the user itself make their own.
    """
    return await _shared(kg, "reader", "reader@example.com")


@pytest.fixture(scope="session")
async def bystander(kg: Keygate) -> SharedUser:
    """Another user, whose data the reader must never see."""
    return await _shared(kg, "bystander")


@pytest.fixture
async def make_key(kg: Keygate, make_key):  # type: ignore[no-untyped-def]
    """The shared ``make_key``, removing this test's keys afterwards so the shared users stay under the key limit."""
    made = []

    async def make(*args, **kwargs):  # type: ignore[no-untyped-def]
        created = await make_key(*args, **kwargs)
        made.append(created.key)
        return created

    yield make
    for key in made:
        try:
            await kg.keys.delete(OPERATOR, key.user_id, key.api_key)
        except NotFound:
            pass
