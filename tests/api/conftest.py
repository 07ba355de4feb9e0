"""Fixtures for in-process API tests: the ASGI app on the session's service, and a client per test.

Each client has its own made-up address, so sessions (bound to the client IP) and any failure
counters of one test never meet another's.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from keygate.api import create_app
from keygate.service import Keygate


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
