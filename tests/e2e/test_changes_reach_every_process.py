"""Every change that narrows what a credential may do is enforced by every process within one second.

Two real server processes (A and B) and the CLI share one database, in each deployment keygate
supports: SQLite on one node, PostgreSQL, and PostgreSQL with Redis. Clients in steady use call B
(and sometimes A) every half second on each path: an ``aptoken`` call, a per-request signed call,
forward auth, and a WebSocket connection that signed in once. The change is made on A, in A's
console, or with the ``keygate`` command; every call that starts more than a second after the change
returned must be refused or see the narrowed rights, and no call before it may be.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta, timezone

import httpx
import pyotp
import pytest
from propagation_support import (
    Credentials,
    Deployment,
    Nonces,
    WebSocketProbe,
    aptoken_probe,
    console_admin,
    console_post,
    forward_auth_probe,
    key_session,
    lacks,
    new_username,
    password_session,
    random_password,
    refused,
    signed_headers,
    signed_probe,
    watch,
)

from keygate.config import Settings
from keygate.domain.sessions import hash_token
from support import REDIS_URL, _psql, need, pg_available, redis_available, settings_env, start_server, stop_server

LATENCIES: dict[str, list[float]] = {}


@pytest.fixture(scope="module", params=["sqlite", "postgresql", "postgresql+redis"])
def deployment(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    kind = request.param
    data = tmp_path_factory.mktemp(f"deploy-{kind.replace('+', '-')}")
    pg_name = None
    if kind == "sqlite":
        url = f"sqlite+aiosqlite:///{data / 'keygate.db'}"
    else:
        need(pg_available(), "PostgreSQL at 127.0.0.1:5432")
        pg_name = f"keygate_deploy_{uuid.uuid4().hex[:10]}"
        _psql(f'CREATE DATABASE "{pg_name}"')
        url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{pg_name}"
    redis = None
    if kind.endswith("redis"):
        need(redis_available(), "Redis at 127.0.0.1:6379")
        redis = REDIS_URL
    settings = Settings(
        data_dir=data, database_url=url, master_key=_master_key(), redis_url=redis,
        redis_namespace=f"kgdeploy{secrets.token_hex(4)}", default_replay_mode="increasing",
        throttle_ip_failures=1_000_000, throttle_key_failures=1_000_000, throttle_user_failures=1_000_000,
        lockout_failures=100,
    )
    env = {**os.environ, **settings_env(settings)}
    a = start_server(settings)
    b = start_server(settings)
    deploy = Deployment(kind, a, b, env)
    try:
        deploy.admin_password = random_password()  # type: ignore[attr-defined]
        deploy.admin_name = new_username()  # type: ignore[attr-defined]
        deploy.cli("user", "create", deploy.admin_name, "--admin", "--password-stdin",  # type: ignore[attr-defined]
                   input=deploy.admin_password + "\n")  # type: ignore[attr-defined]
        yield deploy
    finally:
        stop_server(a)
        stop_server(b)
        if pg_name:
            _psql(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')


def _master_key() -> str:
    import base64

    return base64.b64encode(secrets.token_bytes(32)).decode()


@pytest.fixture
async def on_a(deployment: Deployment) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=deployment.a.base_url, timeout=30) as c:
        yield c


@pytest.fixture
async def on_b(deployment: Deployment) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=deployment.b.base_url, timeout=30) as c:
        yield c


@pytest.fixture
async def admin(deployment: Deployment) -> AsyncIterator[httpx.AsyncClient]:
    client = await console_admin(deployment.a.base_url, deployment.admin_name, deployment.admin_password)  # type: ignore[attr-defined]
    yield client
    await client.aclose()


async def new_trader(deployment: Deployment, admin: httpx.AsyncClient, on_a: httpx.AsyncClient,
                     permissions: tuple[str, ...] = ("Trading", "Withdraw"), **key_fields: object) -> Credentials:
    """A user made in A's console, with a key made by the user's own password session on A."""
    username, password = new_username(), random_password()
    r = await console_post(admin, "/admin/users", "/admin/users", {"username": username, "email": "", "password": password})
    assert r.status_code == 201, r.text
    token = (await on_a.post("/AP/AuthenticateUser", json={"UserName": username, "Password": password})).json()["SessionToken"]
    # ``unique``: the steady clients of one key sign concurrently, so their nonces may arrive out of order.
    fields = {"ReplayMode": "unique", **key_fields}
    r = await on_a.post("/AP/AddUserAPIKey", headers={"aptoken": token}, json={"Permissions": list(permissions), **fields})
    assert r.status_code == 200, r.text
    body = r.json()
    return Credentials(int(body["UserId"]), username, password, body["APIKey"], body["APISecret"])


async def key_paths(deployment: Deployment, on_b: httpx.AsyncClient, creds: Credentials,
                    ws: WebSocketProbe) -> dict[str, object]:
    """The four paths of a key's holder, all against server B."""
    nonces = Nonces()  # one source for every client of the key: no two requests share a nonce
    token = await key_session(on_b, creds, nonces)
    await ws.sign_in_with_key(creds, nonces)
    return {
        "aptoken": aptoken_probe(on_b, token),
        "signed": signed_probe(on_b, creds, nonces),
        "forward-auth": forward_auth_probe(on_b, lambda: signed_headers(creds, nonces)),
        "forward-auth-aptoken": forward_auth_probe(on_b, lambda: {"aptoken": token}),
        "websocket": ws,
    }


def record(deployment: Deployment, change: str, latencies: dict[str, float]) -> None:
    for path, seconds in latencies.items():
        LATENCIES.setdefault(f"{deployment.name} {change} {path}", []).append(seconds)


@pytest.fixture
async def ws(deployment: Deployment) -> AsyncIterator[WebSocketProbe]:
    probe = WebSocketProbe(deployment.b)
    yield probe
    await probe.close()


# ----- key changes ------------------------------------------------------------------------------------

async def test_permission_removed_by_cli_reaches_live_sessions_and_signed_calls(deployment, admin, on_a, on_b, ws) -> None:
    creds = await new_trader(deployment, admin, on_a)
    probes = await key_paths(deployment, on_b, creds, ws)

    async def change() -> None:
        out = await asyncio.to_thread(deployment.cli, "key", "edit", creds.api_key, "-p", "Trading")
        assert "Withdraw" not in out

    record(deployment, "permissions", await watch(probes, change, lacks("Withdraw")))  # type: ignore[arg-type]


async def test_allowlist_narrowed_on_a_refuses_on_b(deployment, admin, on_a, on_b, ws) -> None:
    creds = await new_trader(deployment, admin, on_a)
    probes = await key_paths(deployment, on_b, creds, ws)
    owner = await password_session(on_a, creds)

    async def change() -> None:
        r = await on_a.post("/AP/UpdateUserAPIKey", headers={"aptoken": owner},
                            json={"APIKey": creds.api_key, "IpAllowlist": ["192.0.2.1"]})
        assert r.status_code == 200, r.text

    record(deployment, "allowlist", await watch(probes, change, refused))  # type: ignore[arg-type]


async def test_key_deleted_by_cli_stops_everywhere(deployment, admin, on_a, on_b, ws) -> None:
    creds = await new_trader(deployment, admin, on_a)
    probes = await key_paths(deployment, on_b, creds, ws)

    async def change() -> None:
        await asyncio.to_thread(deployment.cli, "key", "delete", creds.api_key)

    record(deployment, "key deleted", await watch(probes, change, refused))  # type: ignore[arg-type]
    # The audit trail names the operator (the CLI), not the key's owner, as the one who deleted it.
    admin_token = await password_session(on_a, Credentials(0, deployment.admin_name, deployment.admin_password, "", ""))  # type: ignore[attr-defined]
    r = await on_a.post("/AP/GetAuditLog", headers={"aptoken": admin_token}, json={"APIKey": creds.api_key, "Action": "key.delete"})
    assert r.status_code == 200, r.text
    [row] = r.json()
    assert row["ActorUserId"] is None and row["Actor"] == "operator" and row["SubjectUserId"] == creds.user_id, row


async def test_key_switched_to_signature_v2_by_cli_ends_its_apex_sessions_everywhere(deployment, admin, on_a, on_b, ws) -> None:
    """A session made with an APEX signature must not outlive "this key accepts Signature v2 only"."""
    creds = await new_trader(deployment, admin, on_a)
    probes = await key_paths(deployment, on_b, creds, ws)

    async def change() -> None:
        await asyncio.to_thread(deployment.cli, "key", "edit", creds.api_key, "--require-v2")

    record(deployment, "key requires v2", await watch(probes, change, refused))  # type: ignore[arg-type]


async def test_key_expiry_ends_its_sessions_too(deployment, admin, on_a, on_b, ws) -> None:
    expires = datetime.now(timezone.utc) + timedelta(seconds=3)
    creds = await new_trader(deployment, admin, on_a, ExpiresAt=expires.isoformat())
    probes = await key_paths(deployment, on_b, creds, ws)

    async def change() -> None:  # "the change" is the clock reaching the expiry
        await asyncio.sleep(max(0.0, (expires - datetime.now(timezone.utc)).total_seconds()))

    record(deployment, "key expired", await watch(probes, change, refused, settle=0.6))  # type: ignore[arg-type]


async def test_rotation_grace_end_stops_old_secret_and_its_sessions(deployment, admin, on_a, on_b, ws) -> None:
    creds = await new_trader(deployment, admin, on_a)
    probes = await key_paths(deployment, on_b, creds, ws)
    grace = 2

    async def change() -> None:  # rotate with a grace period, then let it run out
        out = json.loads(await asyncio.to_thread(deployment.cli, "key", "rotate", creds.api_key, "--grace", str(grace), "--json"))
        ends = datetime.fromisoformat(out["PreviousSecretValidUntil"])
        await asyncio.sleep(max(0.0, (ends - datetime.now(timezone.utc)).total_seconds()))

    record(deployment, "rotation grace", await watch(probes, change, refused))  # type: ignore[arg-type]


async def test_no_rotation_or_mode_change_reopens_an_accepted_header_set(deployment, admin, on_a, on_b) -> None:
    creds = await new_trader(deployment, admin, on_a, ReplayMode="increasing")
    owner = await password_session(on_a, creds)
    captured = signed_headers(creds, Nonces())
    assert (await on_b.get("/AP/GetUserPermissions", headers=captured)).status_code == 200
    assert (await on_a.get("/AP/GetUserPermissions", headers=captured)).status_code == 401, "a replay is refused"

    await asyncio.to_thread(deployment.cli, "key", "rotate", creds.api_key, "--grace", "60")
    await asyncio.sleep(1.0)
    for client in (on_a, on_b):
        assert (await client.get("/AP/GetUserPermissions", headers=captured)).status_code == 401, "replayed after rotation"

    for mode in ("compatible", "increasing", "unique", "increasing"):
        r = await on_a.post("/AP/UpdateUserAPIKey", headers={"aptoken": owner}, json={"APIKey": creds.api_key, "ReplayMode": mode})
        assert r.status_code == 200, r.text
    await asyncio.sleep(1.0)
    for client in (on_a, on_b):
        assert (await client.get("/AP/GetUserPermissions", headers=captured)).status_code == 401, "replayed after a mode switch"


# ----- user changes -----------------------------------------------------------------------------------

async def user_paths(deployment: Deployment, on_b: httpx.AsyncClient, creds: Credentials, ws: WebSocketProbe,
                     signed: bool = False) -> dict[str, object]:
    """A password session and a key session of the user, on B (and the key's signed calls)."""
    nonces = Nonces()
    key_token = await key_session(on_b, creds, nonces)
    password_token = await password_session(on_b, creds)
    await ws.sign_in_with_password(creds)
    return {
        **({"signed": signed_probe(on_b, creds, nonces)} if signed else {}),
        "aptoken (password)": aptoken_probe(on_b, password_token),
        "aptoken (key)": aptoken_probe(on_b, key_token),
        "forward-auth (password)": forward_auth_probe(on_b, lambda: {"aptoken": password_token}),
        "websocket (password)": ws,
    }


async def test_lock_on_a_refuses_every_path_on_b(deployment, admin, on_a, on_b, ws) -> None:
    creds = await new_trader(deployment, admin, on_a)
    probes = await user_paths(deployment, on_b, creds, ws, signed=True)
    admin_token = await password_session(on_a, Credentials(0, deployment.admin_name, deployment.admin_password, "", ""))  # type: ignore[attr-defined]

    async def change() -> None:
        r = await on_a.post("/AP/LockUser", headers={"aptoken": admin_token}, json={"UserId": creds.user_id})
        assert r.status_code == 200, r.text

    record(deployment, "user locked", await watch(probes, change, refused))  # type: ignore[arg-type]


async def test_password_reset_by_cli_ends_every_session(deployment, admin, on_a, on_b, ws) -> None:
    creds = await new_trader(deployment, admin, on_a)
    probes = await user_paths(deployment, on_b, creds, ws)

    async def change() -> None:
        await asyncio.to_thread(deployment.cli, "user", "passwd", creds.username, "--password-stdin", input=random_password() + "\n")

    record(deployment, "password reset", await watch(probes, change, refused))  # type: ignore[arg-type]


async def test_admin_signs_user_out_everywhere(deployment, admin, on_a, on_b, ws) -> None:
    creds = await new_trader(deployment, admin, on_a)
    probes = await user_paths(deployment, on_b, creds, ws)

    async def change() -> None:
        r = await console_post(admin, "/admin/users", f"/admin/users/{creds.user_id}/signout", {})
        assert r.status_code == 200, r.text

    record(deployment, "sign out everywhere", await watch(probes, change, refused))  # type: ignore[arg-type]


# ----- one session ending -----------------------------------------------------------------------------

async def session_paths(on_b: httpx.AsyncClient, token: str) -> dict[str, object]:
    return {"aptoken": aptoken_probe(on_b, token), "forward-auth": forward_auth_probe(on_b, lambda: {"aptoken": token})}


@pytest.mark.parametrize("kind", ["key", "password"])
async def test_logout_on_a_ends_the_session_on_b(deployment, admin, on_a, on_b, kind: str) -> None:
    creds = await new_trader(deployment, admin, on_a)
    token = await (key_session(on_b, creds, Nonces()) if kind == "key" else password_session(on_b, creds))

    async def change() -> None:
        assert (await on_a.post("/AP/LogOut", headers={"aptoken": token})).status_code == 200

    record(deployment, f"logout ({kind})", await watch(await session_paths(on_b, token), change, refused))  # type: ignore[arg-type]


async def test_admin_ends_one_session_in_the_console(deployment, admin, on_a, on_b) -> None:
    creds = await new_trader(deployment, admin, on_a)
    token = await password_session(on_b, creds)
    other = await password_session(on_b, creds)

    async def change() -> None:
        r = await console_post(admin, "/admin/sessions", "/admin/sessions/end", {"session": hash_token(token)})
        assert r.status_code == 200, r.text

    record(deployment, "end session", await watch(await session_paths(on_b, token), change, refused))  # type: ignore[arg-type]
    assert (await on_b.get("/AP/GetUserPermissions", headers={"aptoken": other})).status_code == 200, "only that session ended"


# ----- two-factor sign-in turned on or off ------------------------------------------------------------

async def test_totp_turned_on_elsewhere_ends_other_password_sessions(deployment, admin, on_a, on_b) -> None:
    creds = await new_trader(deployment, admin, on_a)
    steady_token = await password_session(on_b, creds)
    acting = await password_session(on_a, creds)

    async def change() -> None:
        r = await on_a.post("/AP/EnableGoogle2FA", headers={"aptoken": acting})
        assert r.status_code == 200, r.text
        code = pyotp.TOTP(r.json()["ManualCode"]).now()
        r = await on_a.post("/AP/ConfirmGoogle2FA", headers={"aptoken": acting}, json={"Code": code})
        assert r.status_code == 200, r.text

    record(deployment, "totp on", await watch(await session_paths(on_b, steady_token), change, refused))  # type: ignore[arg-type]


async def test_totp_turned_off_elsewhere_ends_other_password_sessions(deployment, admin, on_a, on_b) -> None:
    creds = await new_trader(deployment, admin, on_a)
    acting = await password_session(on_a, creds)
    r = await on_a.post("/AP/EnableGoogle2FA", headers={"aptoken": acting})
    totp = pyotp.TOTP(r.json()["ManualCode"])
    step = int(time.time()) // 30
    r = await on_a.post("/AP/ConfirmGoogle2FA", headers={"aptoken": acting}, json={"Code": totp.at(step * 30 - 30)})
    assert r.status_code == 200, r.text
    # A sign-in with the code on B: password, then the current step's code.
    r = await on_b.post("/AP/AuthenticateUser", json={"UserName": creds.username, "Password": creds.password})
    pending = r.json()["Pending2FaToken"]
    r = await on_b.post("/AP/Authenticate2FA", headers={"Pending2FaToken": pending}, json={"Code": totp.at(step * 30)})
    assert r.status_code == 200, r.text
    steady_token = r.json()["SessionToken"]

    async def change() -> None:
        # The next step's code (one step of drift is accepted): a code that no sign-in has used.
        r = await on_a.post("/AP/DisableGoogle2FA", headers={"aptoken": acting}, json={"Code": totp.at(step * 30 + 30)})
        assert r.status_code == 200, r.text

    record(deployment, "totp off", await watch(await session_paths(on_b, steady_token), change, refused))  # type: ignore[arg-type]
