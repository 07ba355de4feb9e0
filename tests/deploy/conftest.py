"""Fixtures of the deployment tests: a keygate server that trusts the proxies on 127.0.0.1, signed headers,
and the audit trail as the server writes it (in batches, so it is polled)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from support import Server, start_server, stop_server

from keygate.config import Settings
from keygate.domain.signature import compute_signature
from keygate.service import Keygate
from keygate.service.keys import CreatedKey

IP_FAILURES = 3  # per-address failures before 429: low, so that throttling by address can be seen


@pytest.fixture(scope="module")
def keygate_behind_proxies(settings: Settings, kg: Keygate) -> Iterator[Server]:
    """``keygate serve`` on the session's database, trusting 127.0.0.1 (where nginx and HAProxy connect from)."""
    srv = start_server(settings, {"KEYGATE_TRUSTED_PROXIES": "127.0.0.1", "KEYGATE_THROTTLE_IP_FAILURES": str(IP_FAILURES)})
    yield srv
    stop_server(srv)


def signed(created: CreatedKey) -> dict[str, str]:
    """The four signed headers of ``created``'s key with a fresh nonce."""
    nonce = str(secrets.randbelow(10**12) + 10**12)
    uid, key = created.key.user_id, created.key.api_key
    return {"APIKey": key, "Signature": compute_signature(created.secret, nonce, uid, key), "UserId": str(uid), "Nonce": nonce}


def signed_payload(created: CreatedKey) -> dict[str, Any]:
    """``AuthenticateUser``'s payload as a WebSocket frame carries it."""
    headers = signed(created)
    return {"APIKey": headers["APIKey"], "Signature": headers["Signature"], "UserId": int(headers["UserId"]), "Nonce": headers["Nonce"]}


async def audited_addresses(kg: Keygate, created: CreatedKey, at_least: int = 1) -> list[str | None]:
    """The client addresses of the key's authentication audit rows, once the server has written ``at_least``."""
    for _ in range(60):
        rows = [r for r in await kg.audit.query(api_key=created.key.api_key, limit=100) if r.action.startswith("auth.")]
        if len(rows) >= at_least:
            return [r.client_ip for r in rows]
        await asyncio.sleep(0.1)
    raise AssertionError(f"the server wrote fewer than {at_least} audit rows for the key")
