"""The README's curl walkthrough, run as written with real ``curl``, ``openssl`` and the ``keygate`` CLI.

The script is read out of README.md, so the README cannot drift from what works. Only three things
are adapted to the test: the server address, a unique username instead of ``alice``, and ``PATH``
instead of ``source .venv/bin/activate``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from e2e_support import Server, unique_name

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCK = re.compile(r"<!-- walkthrough:begin -->\s*```sh\n(.*?)```\s*<!-- walkthrough:end -->", re.DOTALL)


def walkthrough_script(base_url: str, username: str) -> str:
    match = BLOCK.search(README.read_text())
    assert match, "README.md lost its walkthrough block"
    script = match.group(1)
    for original, replacement in (
        ("source .venv/bin/activate\n", ""),
        ("BASE=http://127.0.0.1:8000\n", f"BASE={base_url}\n"),
        ("--user alice", f"--user {username}"),
        ("user create alice", f"user create {username}"),
    ):
        assert original in script, f"the walkthrough no longer contains {original!r}"
        script = script.replace(original, replacement)
    return script


@pytest.fixture(scope="module")
def tools() -> None:
    for tool in ("curl", "openssl", "bash"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")


def run_walkthrough(server: Server, username: str) -> subprocess.CompletedProcess[str]:
    env = {
        **server.env,
        "PATH": f"{Path(sys.executable).parent}:{server.env.get('PATH', '/usr/bin:/bin')}",
        "KEYGATE_PASSWORD": "walkthrough password 1",
        # The CLI creates the key with a fresh install's default replay mode, as a reader's would be.
        "KEYGATE_DEFAULT_REPLAY_MODE": "increasing",
    }
    script = "set -euo pipefail\n" + walkthrough_script(server.base_url, username)
    return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120)


async def test_readme_curl_walkthrough(tools: None, server: Server, kg) -> None:  # type: ignore[no-untyped-def]
    username = unique_name("alice")
    result = run_walkthrough(server, username)
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr

    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 4, result.stdout
    auth, info, logout = (json.loads(line) for line in lines[:3])
    user = await kg.users.get_by_name(username)
    assert user is not None

    assert auth["Authenticated"] is True
    assert auth["User"]["UserId"] == user.user_id
    assert auth["Requires2FA"] is False
    token = auth["SessionToken"]
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", token)  # issue time, then a GUID

    assert info["UserName"] == username
    assert info["UserId"] == user.user_id
    assert logout == {"result": True, "errormsg": None, "errorcode": 0, "detail": None}

    refused_body, _, status = lines[3].rpartition(" HTTP ")
    assert status == "401"
    refused = json.loads(refused_body)
    assert refused["result"] is False
    assert refused["errorcode"] == 20

    # The session really is gone for every client, not just for curl.
    again = httpx.post(f"{server.base_url}/ap/getuserinfo", headers={"APToken": token})
    assert again.status_code == 401
    # The secret went through the pipeline, never into the output.
    assert "APISecret" not in result.stdout


def test_openssl_agrees_with_the_protocol_test_vector(tools: None) -> None:
    """The README's check command, as printed there."""
    text = README.read_text()
    command = "printf %s 2277045681428d4f1a2b3c5e6f708192a3b4c5d6e7f8 | openssl dgst -sha256 -hmac 4b3e7c0a9f1d2e8b6a5c4d3e2f1a0b9c"
    assert command in text
    out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30)
    assert out.stdout.split()[-1] == "d49473077df88f71cbae6e0e59c560542afd01bc9feb2520dcf24fd33c1209fa"
