"""Helpers for end-to-end tests: the protocol test vector, the CLI as a subprocess, raw APEX calls."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import httpx
import pyotp

from support import TEST_VECTOR, Server, start_server, stop_server, unique_name  # noqa: F401  (re-exported)


def keygate_cli(*args: str, env: dict[str, str], input: str = "") -> subprocess.CompletedProcess[str]:
    """``python -m keygate ARGS`` against the database and master key named in ``env``."""
    return subprocess.run([sys.executable, "-m", "keygate", *args], env=env, input=input, capture_output=True, text=True, timeout=60)


def cli_create_key(env: dict[str, str], user: str, *options: str) -> dict[str, Any]:
    result = keygate_cli("key", "create", "--user", user, "--json", *options, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def password_session(base_url: str, username: str, password: str) -> str:
    """Sign in with username and password (the session kind that may manage keys)."""
    reply = httpx.post(f"{base_url}/AP/AuthenticateUser", json={"UserName": username, "Password": password})
    assert reply.status_code == 200, reply.text
    return reply.json()["SessionToken"]  # type: ignore[no-any-return]


def previous_totp_code(base32_secret: str) -> str:
    """The code of the previous 30-second step: still accepted (one step of drift), and never the one
    a client computes right after, so enrolment does not spend the code that sign-in will send."""
    return pyotp.TOTP(base32_secret).at(int(time.time()) - 30)
