"""Helpers for end-to-end tests: the protocol test vector, the CLI as a subprocess, raw APEX calls."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pyotp


def _root_conftest() -> ModuleType:
    """tests/conftest.py itself: several folders have a conftest.py, so ``import conftest`` depends on
    collection order."""
    path = Path(__file__).resolve().parents[1] / "conftest.py"
    for name in ("conftest", "keygate_tests_root_conftest"):
        loaded = sys.modules.get(name)
        if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve() == path:
            return loaded
    spec = importlib.util.spec_from_file_location("keygate_tests_root_conftest", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


_root = _root_conftest()
Server = _root.Server
start_server = _root.start_server
stop_server = _root.stop_server
unique_name = _root.unique_name

TEST_VECTOR = {
    "secret": "4b3e7c0a9f1d2e8b6a5c4d3e2f1a0b9c",
    "nonce": "2277045681",
    "user_id": "42",
    "api_key": "8d4f1a2b3c5e6f708192a3b4c5d6e7f8",
    "signature": "d49473077df88f71cbae6e0e59c560542afd01bc9feb2520dcf24fd33c1209fa",
}


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
