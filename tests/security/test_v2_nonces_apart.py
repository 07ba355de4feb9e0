"""A captured Signature v2 request stays refused while the same key signs APEX calls.

The attack: an eavesdropper (a logging proxy, a leaked trace) holds one v2-signed request. The key is
in the default ``window`` replay mode and its owner also signs APEX calls with it; once the key's
window is full, every APEX claim forgets one remembered nonce: the smallest, or, for a key whose
nonces are random, the oldest. v2 nonces shared that table and expire within seconds, so they were
the oldest of all: forgotten first, and the captured request was accepted again within its window.
On the code before, the replay below answers 200 on SQLite and PostgreSQL; Redis kept them apart.
"""

from __future__ import annotations

import secrets
import time

import httpx
import pytest

from keygate.config import Settings
from keygate.domain.iprules import IpAllowlist
from keygate.domain.replay import ReplayMode
from keygate.domain.signature import compute_signature
from keygate.sdk.client import v2_headers
from keygate.service import Keygate
from keygate.service.principal import OPERATOR
from support import start_server, stop_server

WINDOW_SIZE = 16  # remembered APEX nonces per key (KEYGATE_NONCE_WINDOW_SIZE), small to fill quickly


@pytest.mark.parametrize("style", ["increasing", "random"])
async def test_apex_claims_do_not_forget_a_v2_nonce(strict_kg, shared_state: str | None, style: str) -> None:  # type: ignore[no-untyped-def]
    kg = await strict_kg(default_replay_mode="window", nonce_window_size=WINDOW_SIZE)
    owner = await kg.users.create(OPERATOR, "o" + secrets.token_hex(4), secrets.token_urlsafe(16))
    key = (await kg.keys.create(OPERATOR, owner.user_id, frozenset(), IpAllowlist())).key.api_key
    leases = getattr(kg.state, "leases", None)
    if leases is not None:  # the store decides, as when two processes share the key
        leases.may_take = lambda k: False
    captured = "v2:" + secrets.token_urlsafe(2)  # short: the smallest of the key's nonces by length too
    assert await kg.state.claim_signature_nonce(key, captured, 8)
    base = int(time.time() * 1000)
    for i in range(3 * WINDOW_SIZE):
        nonce = str(base + i) if style == "increasing" else secrets.token_hex(8)
        assert await kg.state.claim_window(key, nonce, WINDOW_SIZE, 86400)
    assert not await kg.state.claim_signature_nonce(key, captured, 8)


async def test_a_captured_v2_request_is_refused_while_the_key_signs_apex_calls(settings: Settings, kg: Keygate) -> None:
    """Two server processes on one database (a key used through both is decided by the database,
    not in memory); the owner signs one v2 call, then APEX calls with random nonces, taking turns."""
    user = await kg.users.create(OPERATOR, "t" + secrets.token_hex(4), secrets.token_urlsafe(16))
    made = await kg.keys.create(OPERATOR, user.user_id, frozenset(), IpAllowlist(), replay_mode=ReplayMode.WINDOW)
    extra = {"KEYGATE_NONCE_WINDOW_SIZE": str(WINDOW_SIZE)}
    servers = [start_server(settings, extra), start_server(settings, extra)]
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            url = servers[0].base_url + "/AP/GetUserInfo"
            captured = v2_headers("GET", url, b"", made.key.api_key, made.secret)
            r = await client.get(url, headers=captured)
            assert r.status_code == 200, r.text
            for i in range(4 * WINDOW_SIZE):
                nonce = secrets.token_hex(8)  # random nonces: the key forgets its oldest first
                headers = {"APIKey": made.key.api_key, "UserId": str(user.user_id), "Nonce": nonce,
                           "Signature": compute_signature(made.secret, nonce, user.user_id, made.key.api_key)}
                r = await client.get(servers[i % 2].base_url + "/AP/GetUserPermissions", headers=headers)
                assert r.status_code == 200, r.text
            for server in servers:  # the attacker replays the captured request, within its window
                r = await client.get(server.base_url + "/AP/GetUserInfo", headers=captured)
                assert r.status_code == 401, r.text
                assert "nonce was already used" in r.json()["errormsg"]
    finally:
        for server in servers:
            stop_server(server)
