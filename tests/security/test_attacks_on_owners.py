"""Attacks that try to turn keygate's defences against the people they protect (issue 9).

Each test runs an attacker from many loopback source addresses against real server processes (two of
them on one database where a promise crosses processes), while the victim works from its own address,
and asserts what the victim can still do and that the attacker gained nothing. SQLite keeps the shared
state in the database; PostgreSQL runs with Redis.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import socket
import time

import pytest
from attack_support import (
    addresses,
    client,
    code_at,
    current_step,
    median_ms,
    servers,
    signed,
    wrong_signature,
)

from keygate.domain.errors import Conflict
from keygate.domain.iprules import IpAllowlist
from keygate.domain.replay import ReplayMode
from keygate.service.principal import OPERATOR
from support import unique_name

pytestmark = pytest.mark.serial  # compares latencies: run alone (`make test` runs the serial tests after the parallel part)


@pytest.fixture(scope="module")
def pair(settings, kg):  # type: ignore[no-untyped-def]
    """Two server processes on the session's database (and, with PostgreSQL, one Redis)."""
    with servers(settings, 2) as started:
        yield started


def _pw(user, password: str | None = None) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {"UserName": user.username, "Password": password or user.password}


async def _sign_in_key(srv, address, key) -> str:  # type: ignore[no-untyped-def]
    async with client(srv, address) as c:
        r = await c.post("/AP/AuthenticateUser", headers=signed(key.key.api_key, key.secret, key.key.user_id))
        assert r.status_code == 200 and r.json()["Locked"] is False, r.text
        return str(r.json()["SessionToken"])


# ----- 1. lockout by API key ------------------------------------------------------------------------

async def test_wrong_signatures_for_a_victims_key_lock_nothing(pair, make_user, make_key):  # type: ignore[no-untyped-def]
    victim = await make_user()
    key = await make_key(victim.user_id, ["Trading"])
    home = "127.1.0.2"
    live = await _sign_in_key(pair[0], home, key)

    async def attack(address: str, srv, tries: int) -> list[int]:  # type: ignore[no-untyped-def]
        async with client(srv, address) as c:
            return [(await c.post("/AP/AuthenticateUser", headers=wrong_signature(key.key.api_key, victim.user_id))).status_code
                    for _ in range(tries)]

    # 60 wrong signatures from 20 addresses over both servers, and one address that keeps going.
    spread = await asyncio.gather(*(attack(a, pair[i % 2], 3) for i, a in enumerate(addresses(1, 20))))
    stubborn = await attack("127.1.9.9", pair[0], 25)
    assert all(s == 401 for run in spread for s in run), "nothing was gained, not even a hint"
    assert stubborn[-1] == 429, "a noisy address is slowed down (by itself only)"

    for srv in pair:
        async with client(srv, home) as v:
            r = await v.get("/AP/GetUserInfo", headers={"aptoken": live})
            assert r.status_code == 200, f"the victim's live key session still works: {r.text}"
            r = await v.post("/AP/AuthenticateUser", headers=signed(key.key.api_key, key.secret, victim.user_id))
            assert r.status_code == 200 and r.json()["Locked"] is False, r.text
            r = await v.get("/AP/GetUserInfo", headers=signed(key.key.api_key, key.secret, victim.user_id))
            assert r.status_code == 200, f"signed calls still work: {r.text}"
            r = await v.post("/AP/AuthenticateUser", json=_pw(victim))
            assert r.status_code == 200 and r.json()["Authenticated"] is True, r.text


# ----- 2. the password throttle used against its owner ---------------------------------------------

async def _console_login(srv, address: str, username: str, password: str, device: str | None = None):  # type: ignore[no-untyped-def]
    cookies = {"kg_device": device} if device else {}
    async with client(srv, address, cookies=cookies) as c:
        page = await c.get("/console/login")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert csrf, page.text
        r = await c.post("/console/login", data={"csrf_token": csrf.group(1), "username": username, "password": password})
        issued = [ck.value for ck in c.cookies.jar if ck.name == "kg_device" and ck.value != device]
        return r, (issued[-1] if issued else device)


async def test_password_guesses_elsewhere_never_keep_the_owner_out(pair, make_user):  # type: ignore[no-untyped-def]
    victim = await make_user()
    home, laptop, cafe = "127.2.0.2", "127.2.0.3", "127.2.0.4"
    async with client(pair[0], home) as v:
        assert (await v.post("/AP/AuthenticateUser", json=_pw(victim))).status_code == 200  # home: a known address
    async with client(pair[1], laptop) as v:
        r = await v.post("/AP/AuthenticateUser", json=_pw(victim))
        device = r.headers.get("Keygate-Device")  # an API client keeps this header's value
    browser_response, browser_device = await _console_login(pair[0], laptop, victim.username, victim.password)
    assert browser_response.status_code == 303 and browser_device, "the console hands the browser a device cookie"

    async def attack(address: str, srv) -> list[int]:  # type: ignore[no-untyped-def]
        seen, ends = [], time.monotonic() + 5  # long enough to outlast the back-off and reach the lockout
        async with client(srv, address) as c:
            while time.monotonic() < ends:
                seen.append((await c.post("/AP/AuthenticateUser", json=_pw(victim, f"guess-{secrets.token_hex(4)}"))).status_code)
                await asyncio.sleep(0.3)
        return seen

    attack_task = asyncio.gather(*(attack(a, pair[i % 2]) for i, a in enumerate(addresses(2, 10))))
    victim_during = []
    for i in range(4):  # the owner keeps signing in while the attack runs
        await asyncio.sleep(0.8)
        async with client(pair[i % 2], home) as v:
            victim_during.append((await v.post("/AP/AuthenticateUser", json=_pw(victim))).status_code)
    statuses = await attack_task
    assert {s for run in statuses for s in run} <= {401, 429}
    assert 429 in {s for run in statuses for s in run}, "the guessing was throttled (across both servers)"
    assert victim_during == [200] * 4, victim_during

    # First, while the attack's back-off certainly lasts: even the right password, from nowhere known, waits.
    for srv in pair:
        async with client(srv, "127.2.9.9") as stranger:
            assert (await stranger.post("/AP/AuthenticateUser", json=_pw(victim))).status_code == 429
    r, _ = await _console_login(pair[0], "127.2.9.8", victim.username, victim.password)
    assert r.status_code == 429
    for srv in pair:
        async with client(srv, home) as v:  # the usual place
            assert (await v.post("/AP/AuthenticateUser", json=_pw(victim))).status_code == 200
        async with client(srv, cafe, headers={"Keygate-Device": device or ""}) as v:  # a new place, a known device
            assert (await v.post("/AP/AuthenticateUser", json=_pw(victim))).status_code == 200
        r, _ = await _console_login(srv, cafe, victim.username, victim.password, browser_device)
        assert r.status_code == 303, "the browser with its device cookie signs in"


# ----- 3. enumeration through throttling --------------------------------------------------------------

async def test_throttling_tells_known_and_unknown_usernames_apart_in_no_way(pair, make_user):  # type: ignore[no-untyped-def]
    known = await make_user()
    unknown = unique_name("ghost")

    async def probe(name: str, start: int) -> list[tuple[int, bool, bytes]]:
        seen = []
        for i, address in enumerate(addresses(3, 10, start)):
            async with client(pair[i % 2], address) as c:
                r = await c.post("/AP/AuthenticateUser", json={"UserName": name, "Password": f"guess-{i}-password"})
                seen.append((r.status_code, "retry-after" in r.headers, r.content))
        return seen

    a, b = await probe(known.username, 10), await probe(unknown, 100)
    assert a == b, (a, b)
    assert [s for s, _, _ in a].count(429) >= 5, "unknown names are throttled like known ones"


# ----- 4. Argon2 load ---------------------------------------------------------------------------------

async def test_a_password_spray_does_not_slow_key_sign_ins(pair, make_user, make_key):  # type: ignore[no-untyped-def]
    victim = await make_user()
    key = await make_key(victim.user_id)
    srv, home = pair[0], "127.4.0.2"

    async def key_sign_ins(n: int) -> list[float]:
        times = []
        async with client(srv, home) as v:
            for _ in range(n):
                t = time.perf_counter()
                r = await v.post("/AP/AuthenticateUser", headers=signed(key.key.api_key, key.secret, victim.user_id))
                times.append(time.perf_counter() - t)
                assert r.status_code == 200
        return times

    await key_sign_ins(5)  # warm
    before = median_ms(await key_sign_ins(40))
    stop = asyncio.Event()
    seen: list[int] = []

    async def spray(address: str) -> None:
        async with client(srv, address) as c:
            while not stop.is_set():
                r = await c.post("/AP/AuthenticateUser", json={"UserName": unique_name("nobody"), "Password": "Spray-password-1"})
                seen.append(r.status_code)

    sprayers = [asyncio.create_task(spray(a)) for a in addresses(4, 24)]
    await asyncio.sleep(1.5)
    during = median_ms(await key_sign_ins(40))
    async with client(srv, home) as v:
        r = await v.post("/AP/AuthenticateUser", json=_pw(victim))
        assert r.status_code == 200, "the owner's password, from home, works during the spray"
    stop.set()
    await asyncio.gather(*sprayers)
    assert seen and set(seen) <= {401, 429}, "the spray gained nothing"
    assert during <= before * 3 + 15, f"key sign-in median {before:.1f} ms before, {during:.1f} ms during the spray"


# ----- 5. TOTP ----------------------------------------------------------------------------------------

async def test_a_totp_code_signs_in_once_across_processes_and_the_seed_needs_a_code_to_change(pair, kg, make_user, make_key):  # type: ignore[no-untyped-def]
    victim = await make_user()
    secret, _ = await kg.users.begin_totp(OPERATOR, victim.user_id)
    await kg.users.confirm_totp(OPERATOR, victim.user_id, code_at(secret, current_step()))
    home = "127.5.0.2"
    await _sign_in_key(pair[0], home, await make_key(victim.user_id))  # the victim's trading client lives at home

    async def pending(srv) -> str:  # type: ignore[no-untyped-def]
        async with client(srv, home) as c:
            r = await c.post("/AP/AuthenticateUser", json=_pw(victim))
            assert r.status_code == 200 and r.json()["Requires2FA"] is True, r.text
            return str(r.json()["Pending2FaToken"])

    async def complete(srv, token: str, code: str):  # type: ignore[no-untyped-def]
        async with client(srv, home) as c:
            return await c.post("/AP/Authenticate2FA", headers={"Pending2FaToken": token}, json={"Code": code})

    step = current_step()
    tokens = [await pending(pair[i % 2]) for i in range(3)]
    code = code_at(secret, step)
    replies = await asyncio.gather(*(complete(pair[i % 2], t, code) for i, t in enumerate(tokens)))
    assert sorted(r.status_code for r in replies) == [200, 401, 401], [r.text for r in replies]
    old = await complete(pair[1], await pending(pair[1]), code_at(secret, step - 1))
    assert old.status_code == 401, "the previous step's code is refused after a newer one was used"
    fresh = await complete(pair[0], await pending(pair[0]), code_at(secret, step + 1))
    assert fresh.status_code == 200, "the owner signs in with the next code"
    session = fresh.json()["SessionToken"]

    async with client(pair[0], home, headers={"aptoken": session}) as c:
        r = await c.post("/AP/EnableGoogle2FA", json={})
        assert r.status_code == 400 and "current 6-digit code" in r.json()["errormsg"], "a password session alone cannot replace the seed"
        r = await c.post("/AP/EnableGoogle2FA", json={"Code": "000000" if code_at(secret, step + 1) != "000000" else "111111"})
        assert r.status_code == 400
    assert (await kg.users.require(victim.user_id)).sealed_pending_totp is None
    async with client(pair[0], home, headers={"aptoken": session}) as c:
        r = await c.post("/AP/EnableGoogle2FA", json={"Code": code_at(secret, current_step())})
        assert r.status_code == 200 and r.json()["ManualCode"], "with a current code the owner may replace it"


# ----- 6. timing --------------------------------------------------------------------------------------

async def test_key_refusals_take_the_same_time_whatever_the_reason(pair, make_user, make_key):  # type: ignore[no-untyped-def]
    victim, other = await make_user(), await make_user()
    key, other_key = await make_key(victim.user_id), await make_key(other.user_id)
    reasons = {
        "unknown key": lambda: wrong_signature("K" * 32, victim.user_id),
        "another user's key": lambda: signed(other_key.key.api_key, other_key.secret, victim.user_id),
        "unknown user": lambda: signed(key.key.api_key, key.secret, 987_654_321),
        "wrong signature": lambda: wrong_signature(key.key.api_key, victim.user_id),
    }
    times: dict[str, list[float]] = {r: [] for r in reasons}
    sources = addresses(6, 40)
    srv = pair[0]
    for rnd in range(50):
        async with client(srv, sources[rnd % len(sources)]) as c:  # ten requests an address stay below its threshold
            for reason, make in reasons.items():
                t = time.perf_counter()
                r = await c.post("/AP/AuthenticateUser", headers=make())
                times[reason].append(time.perf_counter() - t)
                assert r.status_code == 401
    medians = {r: median_ms(t) for r, t in times.items()}
    assert max(medians.values()) <= min(medians.values()) * 1.10, medians


# ----- 7. unbounded upload ----------------------------------------------------------------------------

def _chunked_upload(port: int, path: str, total: int) -> tuple[bytes, int]:
    """Send a chunked multipart body of ``total`` bytes; return the reply's start and the bytes sent."""
    sock = socket.create_connection(("127.0.0.1", port), source_address=("127.7.0.2", 0), timeout=20)
    boundary = "b0undary"
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n").encode()
    sent = 0
    try:
        sock.sendall(head)
        part = f"--{boundary}\r\nContent-Disposition: form-data; name=\"f\"; filename=\"x.bin\"\r\n\r\n".encode()
        chunk = part + b"A" * (65536 - len(part))
        while sent < total:
            sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            sent += len(chunk)
            chunk = b"A" * 65536
        sock.sendall(b"0\r\n\r\n")
    except OSError:
        pass  # the server answered and closed: what we want
    try:
        reply = sock.recv(200)
    except OSError:
        reply = b""
    sock.close()
    return reply, sent


@pytest.mark.parametrize("path", ["/console/login", "/AP/AuthenticateUser"])
def test_a_chunked_body_is_cut_at_the_limit_on_every_route(pair, path: str):  # type: ignore[no-untyped-def]
    port = int(pair[0].base_url.rsplit(":", 1)[1])
    reply, sent = _chunked_upload(port, path, 40 * 2**20)
    assert reply.startswith(b"HTTP/1.1 413"), reply
    assert sent < 20 * 2**20, f"the server kept reading: {sent} bytes"


# ----- 8. memory --------------------------------------------------------------------------------------

async def test_failing_addresses_do_not_grow_the_process(settings, monkeypatch):  # type: ignore[no-untyped-def]
    import httpx

    from keygate.api import create_app
    from keygate.service import Keygate
    from keygate.service import guard as guard_module
    from keygate.service.cache import TTLCache

    monkeypatch.setattr(guard_module, "LOCAL_ENTRIES", 300, raising=False)
    fast = {"refusal_seconds": 0.0} if hasattr(settings, "refusal_seconds") else {}
    service = Keygate(settings.model_copy(update=dict(throttle_ip_failures=1, throttle_key_failures=1, **fast)))
    await service.start(bootstrap_admin=False)
    try:
        app = create_app(keygate=service)

        async def fail_from(i: int) -> None:
            ip = f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"
            transport = httpx.ASGITransport(app=app, client=(ip, 40000))
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                for _ in range(2):
                    await c.post("/AP/AuthenticateUser", headers=wrong_signature("K" * 32, 1))

        for batch in range(0, 1200, 100):
            await asyncio.gather(*(fail_from(i) for i in range(batch, batch + 100)))
        for name, value in vars(service.guard).items():
            if isinstance(value, (set, dict, list, TTLCache)):
                assert len(value) <= 300, f"AbuseGuard.{name} holds {len(value)} entries"
    finally:
        await service.close()


# ----- 9. nonce refusals ------------------------------------------------------------------------------

async def test_nonce_refusals_of_a_key_holder_do_not_throttle_its_address(pair, kg, make_user):  # type: ignore[no-untyped-def]
    user, admin = await make_user(), await make_user(admin=True)
    await kg.users.require(user.user_id)
    key = await kg.keys.create(OPERATOR, user.user_id, frozenset(), IpAllowlist(), replay_mode=ReplayMode.INCREASING)
    office = "127.9.0.2"
    async with client(pair[0], office) as c:
        r = await c.post("/AP/AuthenticateUser", headers=signed(key.key.api_key, key.secret, user.user_id, str(10**15)))
        assert r.status_code == 200
        for _ in range(40):  # a client that sends random nonces to a key in increasing mode
            r = await c.post("/AP/AuthenticateUser", headers=signed(key.key.api_key, key.secret, user.user_id, str(secrets.randbelow(10**12))))
            assert r.status_code == 401 and "Nonce must be greater" in r.json()["errormsg"]
        r = await c.post("/AP/AuthenticateUser", json=_pw(admin))
        assert r.status_code == 200, f"the administrator at the same address signs in: {r.text}"


# ----- 10. usernames that differ in case ------------------------------------------------------------

async def test_usernames_are_unique_without_regard_to_case_and_sign_in_in_either_case(pair, kg):  # type: ignore[no-untyped-def]
    name = unique_name("alice")
    password = secrets.token_urlsafe(16)
    await kg.users.create(OPERATOR, name, password)
    with pytest.raises(Conflict):
        await kg.users.create(OPERATOR, name.upper(), secrets.token_urlsafe(16))
    for spelling in (name, name.upper()):
        async with client(pair[0], "127.10.0.2") as c:
            r = await c.post("/AP/AuthenticateUser", json={"UserName": spelling, "Password": password})
            assert r.status_code == 200, r.text


def test_the_migration_renames_existing_case_duplicates(tmp_path):  # type: ignore[no-untyped-def]
    from alembic import command
    from sqlalchemy import create_engine, text

    from keygate.store.database import _alembic_config

    engine = create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    with engine.begin() as conn:
        command.upgrade(_alembic_config(conn), "0002")
        for uid, name in ((1, "alice"), (2, "ALICE"), (3, "Alice"), (4, "bob")):
            conn.execute(text("INSERT INTO users (user_id, username, email, password_hash, is_admin, locked, account_id, created_at) "
                              "VALUES (:u, :n, '', 'x', 0, 0, :u, '2026-01-01 00:00:00')"), {"u": uid, "n": name})
    with engine.begin() as conn:
        command.upgrade(_alembic_config(conn), "heads")
        names = dict(conn.execute(text("SELECT user_id, username FROM users")).all())
        renames = conn.execute(text("SELECT detail FROM audit_events WHERE action = 'user.rename'")).scalars().all()
    assert names == {1: "alice", 2: "ALICE-2", 3: "Alice-3", 4: "bob"}
    assert sorted(renames) == ["ALICE -> ALICE-2", "Alice -> Alice-3"]
