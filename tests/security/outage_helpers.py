"""Every authenticating path of a real server, asked at once: for the database and Redis outage tests.

``Caller`` holds what the paths need (a key, a password, a session token, a pending two-factor
token, an open WebSocket signed in on its own), made while everything was up; ``probe()`` asks each
path once and returns what a client saw.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import pyotp
from websockets.sync.client import ClientConnection, connect

from keygate.domain.iprules import IpAllowlist
from keygate.domain.signature import compute_signature
from keygate.service import Keygate
from keygate.service.keys import CreatedKey
from keygate.service.principal import OPERATOR

_CSRF = re.compile(r'name="csrf_token" value="([^"]*)"')


@dataclass
class Seen:
    status: int | None  # None for a WebSocket frame (the frame has no status; its body says it)
    body: Any
    seconds: float


@dataclass
class Caller:
    """The credentials, made on the service before the server starts."""

    user_id: int
    username: str
    password: str
    key: CreatedKey
    totp_username: str
    totp_password: str
    totp_secret: str
    token: str = ""
    pending_2fa: str = ""
    ws: ClientConnection | None = None
    _nonce: int = field(default_factory=time.time_ns)

    def signed(self) -> dict[str, str]:
        self._nonce += 1
        nonce, api_key = str(self._nonce), self.key.key.api_key
        return {"APIKey": api_key, "Signature": compute_signature(self.key.secret, nonce, self.user_id, api_key),
                "UserId": str(self.user_id), "Nonce": nonce}


async def make_caller(kg: Keygate, tag: str) -> Caller:
    password, totp_password = f"pw-{tag}-1-long-enough", f"pw-{tag}-2-long-enough"
    user = await kg.users.create(OPERATOR, f"out{tag}", password, "")
    key = await kg.keys.create(OPERATOR, user.user_id, frozenset(), IpAllowlist(), "outage")
    totp_user = await kg.users.create(OPERATOR, f"out{tag}2fa", totp_password, "")
    secret, _ = await kg.users.begin_totp(OPERATOR, totp_user.user_id)
    await kg.users.confirm_totp(OPERATOR, totp_user.user_id, pyotp.TOTP(secret).now())
    await kg.flush()
    return Caller(user.user_id, user.username, password, key, totp_user.username, totp_password, secret)


def sign_in_everywhere(http: httpx.Client, ws_url: str, caller: Caller) -> None:
    """While all is up: a session token, a pending two-factor token, a WebSocket signed in."""
    r = http.post("/AP/AuthenticateUser", headers=caller.signed())
    assert r.status_code == 200, r.text
    caller.token = r.json()["SessionToken"]
    r = http.post("/AP/AuthenticateUser", json={"UserName": caller.totp_username, "Password": caller.totp_password})
    assert r.status_code == 200 and r.json()["Requires2FA"] is True, r.text
    caller.pending_2fa = r.json()["Pending2FaToken"]
    caller.ws = connect(ws_url, open_timeout=10)
    reply = _frame(caller.ws, "AuthenticateUser", {**caller.signed()})
    assert reply["Authenticated"] is True, reply


def _frame(ws: ClientConnection, name: str, payload: dict[str, Any]) -> Any:
    ws.send(json.dumps({"m": 0, "i": 2, "n": name, "o": json.dumps(payload)}))
    return json.loads(json.loads(ws.recv(timeout=30))["o"])


def _timed(call) -> Seen:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    r = call()
    seconds = time.monotonic() - started
    if isinstance(r, httpx.Response):
        try:
            body: Any = r.json()
        except ValueError:
            body = r.text
        return Seen(r.status_code, body, seconds)
    return Seen(None, r, seconds)


def _console_sign_in(base_url: str, username: str, password: str) -> httpx.Response:
    with httpx.Client(base_url=f"{base_url}/console", timeout=30) as console:
        page = console.get("/login")
        m = _CSRF.search(page.text)
        assert m, page.text[:300]
        return console.post("/login", data={"csrf_token": m.group(1), "username": username, "password": password})


def probe(http: httpx.Client, base_url: str, caller: Caller) -> dict[str, Seen]:
    """Ask every authenticating path once. Authenticate2FA goes last: a success uses its token up."""
    assert caller.ws is not None
    token = {"aptoken": caller.token}
    return {
        "AuthenticateUser (key headers)": _timed(lambda: http.post("/AP/AuthenticateUser", headers=caller.signed())),
        "AuthenticateUser (key in body)": _timed(lambda: http.post("/AP/AuthenticateUser", json=caller.signed())),
        "AuthenticateUser (password)": _timed(lambda: http.post("/AP/AuthenticateUser", json={"UserName": caller.username, "Password": caller.password})),
        "Authenticate (Basic)": _timed(lambda: http.post("/AP/Authenticate", auth=(caller.username, caller.password))),
        "WebAuthenticateUser (password)": _timed(lambda: http.post("/AP/WebAuthenticateUser", json={"UserName": caller.username, "Password": caller.password})),
        "WebAuthenticateUser (SessionToken)": _timed(lambda: http.post("/AP/WebAuthenticateUser", json={"SessionToken": caller.token})),
        "GetUserInfo (aptoken)": _timed(lambda: http.post("/AP/GetUserInfo", headers=token)),
        "GetUserAPIKeys (signed private call)": _timed(lambda: http.post("/AP/GetUserAPIKeys", headers=caller.signed())),
        "forward auth (aptoken)": _timed(lambda: http.get("/keygate/authorize", headers=token)),
        "forward auth (signed)": _timed(lambda: http.get("/keygate/authorize", headers=caller.signed())),
        "WebSocket GetUserInfo (connection's session)": _timed(lambda: _frame(caller.ws, "GetUserInfo", {})),  # type: ignore[arg-type]
        "WebSocket AuthenticateUser": _timed(lambda: _frame(caller.ws, "AuthenticateUser", caller.signed())),  # type: ignore[arg-type]
        "console sign-in": _timed(lambda: _console_sign_in(base_url, caller.username, caller.password)),
        "Authenticate2FA": _timed(lambda: http.post("/AP/Authenticate2FA", headers={"Pending2FaToken": caller.pending_2fa},
                                                    json={"Code": pyotp.TOTP(caller.totp_secret).now()})),
    }


def refused_as_unavailable(seen: dict[str, Seen], mentions: str) -> list[str]:
    """What did not answer a clean 503 with an APEX body (an HTML page for the console) naming ``mentions``."""
    wrong = []
    for path, s in seen.items():
        if path == "console sign-in":
            ok = s.status == 503 and isinstance(s.body, str) and "temporarily unavailable" in s.body and mentions in s.body
        elif isinstance(s.body, dict) and "Authenticated" in s.body:  # a sign-in path: the auth-failure shape
            ok = (s.status in (503, None) and s.body["Authenticated"] is False and s.body.get("errorcode") == 102
                  and mentions in s.body["errormsg"])
        else:
            ok = (s.status in (503, None) and isinstance(s.body, dict) and s.body.get("result") is False
                  and s.body.get("errorcode") == 102 and mentions in s.body["errormsg"] and "detail" in s.body)
        if not ok:
            wrong.append(f"{path}: {s.status} {str(s.body)[:200]}")
    return wrong


def served(seen: dict[str, Seen]) -> list[str]:
    """What did not answer as it does when all is well."""
    wrong = []
    for path, s in seen.items():
        if path == "console sign-in":
            ok = s.status == 303
        elif path == "AuthenticateUser (password)" or path.startswith(("Authenticate ", "WebAuthenticateUser", "AuthenticateUser")):
            ok = s.status in (200, None) and isinstance(s.body, dict) and s.body.get("Authenticated") is True
        elif path == "Authenticate2FA":
            ok = s.status == 200 and s.body.get("Authenticated") is True
        else:
            ok = s.status in (200, None) and not (isinstance(s.body, dict) and s.body.get("result") is False)
        if not ok:
            wrong.append(f"{path}: {s.status} {str(s.body)[:200]}")
    return wrong


def wait_for(predicate, seconds: float = 20.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False
