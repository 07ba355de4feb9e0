"""Two real server processes and the CLI on one database, and clients in steady use against them.

A ``Deployment`` is what an operator runs: servers A and B (separate processes) on one database, in
one of the three configurations keygate supports (SQLite on one node, PostgreSQL, PostgreSQL with
Redis), and the ``keygate`` command on the same database. Users and keys are set up before a test's
clients start, through an in-process service; every change under test is made through server A's
API, A's console or the CLI, never through that service, so nothing the servers know comes from the
test's own process.

A ``Steady`` client calls one path every half second, before, while and after a change, and records
what each call saw, so a test can say when the change took effect and that nothing before it broke.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from e2e_support import keygate_cli
from websockets.asyncio.client import connect

from keygate.domain.signature import compute_signature
from support import Server, unique_name

INTERVAL = 0.5  # how often a client in steady use calls
BOUND = 1.0  # every narrowing change is enforced everywhere within this


@dataclass
class Deployment:
    name: str
    a: Server
    b: Server
    env: dict[str, str]  # the CLI's environment: same database, master key and Redis as the servers

    def cli(self, *args: str, input: str = "") -> str:
        result = keygate_cli(*args, env=self.env, input=input)
        assert result.returncode == 0, f"keygate {' '.join(args)} failed: {result.stderr}"
        return result.stdout


@dataclass
class Credentials:
    """A user with a password, and one API key of theirs (with its secret)."""

    user_id: int
    username: str
    password: str
    api_key: str
    secret: str


class Nonces:
    """Increasing millisecond nonces, as ccxt and the SDK send."""

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> str:
        self._last = max(time.time_ns() // 1_000_000, self._last + 1)
        return str(self._last)


def signed_headers(creds: Credentials, nonces: Nonces, secret: str | None = None) -> dict[str, str]:
    nonce = nonces.next()
    sig = compute_signature(secret or creds.secret, nonce, creds.user_id, creds.api_key)
    return {"APIKey": creds.api_key, "Signature": sig, "UserId": str(creds.user_id), "Nonce": nonce}


async def key_session(client: httpx.AsyncClient, creds: Credentials, nonces: Nonces, secret: str | None = None) -> str:
    r = await client.post("/AP/AuthenticateUser", headers=signed_headers(creds, nonces, secret))
    assert r.status_code == 200 and r.json()["Authenticated"] is True, r.text
    return str(r.json()["SessionToken"])


async def password_session(client: httpx.AsyncClient, creds: Credentials) -> str:
    r = await client.post("/AP/AuthenticateUser", json={"UserName": creds.username, "Password": creds.password})
    assert r.status_code == 200 and r.json()["Authenticated"] is True, r.text
    return str(r.json()["SessionToken"])


# ----- what one call saw ------------------------------------------------------------------------------
# Each probe answers the permissions the caller holds (a list), or None when the call was refused.

Probe = Callable[[], Awaitable["list[str] | None"]]


def _permissions_or_refusal(r: httpx.Response) -> list[str] | None:
    if r.status_code == 200:
        return list(r.json())
    assert r.status_code in (401, 403), f"unexpected {r.status_code}: {r.text}"
    body = r.json()
    assert body["result"] is False and body["errorcode"] == 20, r.text
    return None


def aptoken_probe(client: httpx.AsyncClient, token: str) -> Probe:
    async def probe() -> list[str] | None:
        return _permissions_or_refusal(await client.get("/AP/GetUserPermissions", headers={"aptoken": token}))

    return probe


def signed_probe(client: httpx.AsyncClient, creds: Credentials, nonces: Nonces, secret: str | None = None) -> Probe:

    async def probe() -> list[str] | None:
        return _permissions_or_refusal(await client.get("/AP/GetUserPermissions", headers=signed_headers(creds, nonces, secret)))

    return probe


def forward_auth_probe(client: httpx.AsyncClient, headers: Callable[[], dict[str, str]]) -> Probe:
    """Forward auth answers the caller's permissions in ``X-Keygate-Permissions``."""

    async def probe() -> list[str] | None:
        r = await client.get("/keygate/authorize", headers=headers())
        if r.status_code == 200:
            return [p for p in r.headers["x-keygate-permissions"].split(",") if p]
        assert r.status_code in (401, 403), f"unexpected {r.status_code}: {r.text}"
        assert r.json()["errorcode"] == 20, r.text
        return None

    return probe


class WebSocketProbe:
    """A WebSocket connection signed in once, then asking ``GetUserPermissions`` in frames."""

    def __init__(self, server: Server) -> None:
        self._url = server.base_url.replace("http://", "ws://") + "/WSGateway"
        self._ws: Any = None
        self._i = 0

    async def _ask(self, name: str, payload: dict[str, Any]) -> Any:
        self._i += 2
        await self._ws.send(json.dumps({"m": 0, "i": self._i, "n": name, "o": json.dumps(payload)}))
        reply = json.loads(await asyncio.wait_for(self._ws.recv(), 10))
        assert reply["i"] == self._i, reply
        return json.loads(reply["o"])

    async def sign_in_with_key(self, creds: Credentials, nonces: Nonces) -> None:
        self._ws = await connect(self._url)
        h = signed_headers(creds, nonces)
        body = await self._ask("AuthenticateUser", {"APIKey": h["APIKey"], "Signature": h["Signature"],
                                                    "UserId": creds.user_id, "Nonce": h["Nonce"]})
        assert body["Authenticated"] is True, body

    async def sign_in_with_password(self, creds: Credentials) -> None:
        self._ws = await connect(self._url)
        body = await self._ask("AuthenticateUser", {"UserName": creds.username, "Password": creds.password})
        assert body["Authenticated"] is True, body

    async def __call__(self) -> list[str] | None:
        body = await self._ask("GetUserPermissions", {})
        if isinstance(body, list):
            return list(body)
        assert body["result"] is False and body["errorcode"] == 20, body
        return None

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()


@dataclass
class Steady:
    """Calls ``probe`` every ``INTERVAL`` seconds until stopped, recording (time, what it saw)."""

    name: str
    probe: Probe
    seen: list[tuple[float, list[str] | None]] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _stop: bool = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self._stop:
            started = time.monotonic()
            self.seen.append((started, await self.probe()))
            await asyncio.sleep(max(0.0, INTERVAL - (time.monotonic() - started)))

    async def stop(self) -> None:
        self._stop = True
        assert self._task is not None
        await self._task


async def watch(probes: dict[str, Probe], change: Callable[[], Awaitable[None]],
                narrowed: Callable[[list[str] | None], bool], *, settle: float = 1.2, after: float = 2.2,
                ) -> dict[str, float]:
    """Run every probe in steady use, make the change, and check the promise.

    Before the change every probe must see an un-narrowed answer; every call that starts more than
    ``BOUND`` after the change returned must see a narrowed one (refused, or fewer rights). Returns,
    per probe, how long after the change returned its first narrowed answer came.
    """
    steady = {name: Steady(name, probe) for name, probe in probes.items()}
    for s in steady.values():
        s.start()
    await asyncio.sleep(settle)
    began = time.monotonic()
    await change()
    done = time.monotonic()
    await asyncio.sleep(after)
    for s in steady.values():
        await s.stop()
    latencies: dict[str, float] = {}
    for name, s in steady.items():
        before = [seen for at, seen in s.seen if at < began]
        assert before and not any(narrowed(seen) for seen in before), f"{name}: narrowed before the change: {before}"
        late = [(round(at - done, 2), seen) for at, seen in s.seen if at > done + BOUND]
        assert late, f"{name}: no call after the bound"
        wrong = [(t, seen) for t, seen in late if not narrowed(seen)]
        assert not wrong, f"{name}: still allowed more than {BOUND}s after the change: {wrong} (all: {late})"
        first = next(at for at, seen in s.seen if at >= began and narrowed(seen))
        latencies[name] = max(0.0, first - done)
    return latencies


def refused(seen: list[str] | None) -> bool:
    return seen is None


def lacks(permission: str) -> Callable[[list[str] | None], bool]:
    return lambda seen: seen is None or permission not in seen


# ----- the console, driven over HTTP as a browser would -----------------------------------------------

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


async def console_admin(base_url: str, username: str, password: str) -> httpx.AsyncClient:
    """An httpx client signed in to the console of ``base_url`` as an administrator."""
    client = httpx.AsyncClient(base_url=base_url + "/console", follow_redirects=False, timeout=30)
    page = await client.get("/login")
    token = _CSRF.search(page.text)
    assert token, page.text
    r = await client.post("/login", data={"username": username, "password": password, "csrf_token": token.group(1)})
    assert r.status_code == 303, r.text
    return client


async def console_post(client: httpx.AsyncClient, page: str, path: str, data: dict[str, str]) -> httpx.Response:
    """Post a console form the way its page would: with the page's CSRF token."""
    html = (await client.get(page)).text
    token = _CSRF.search(html)
    assert token, html
    return await client.post(path, data={**data, "csrf_token": token.group(1), "form_id": secrets.token_urlsafe(8)})


def random_password() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(15)).decode()


def new_username() -> str:
    return unique_name("trader")
