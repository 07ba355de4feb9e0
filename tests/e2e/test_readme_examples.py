"""The README's SDK and ccxt examples, run as written against a real server.

Each Python block between "## Python SDK" and "## Endpoints" is executed with the names the README
says the reader supplies (``USER_ID``, ``API_KEY``, ``SECRET``, ``USERNAME``, ``PASSWORD``,
``TOTP_SECRET``) and the server's address in place of ``BASE_URL``. Blocks run in a worker thread,
where the async example's ``asyncio.run`` has no running loop to collide with.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
from pathlib import Path
from typing import Any

import pytest
from e2e_support import Server, previous_totp_code

from keygate.service.principal import OPERATOR

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
BASE_LINE = 'BASE_URL = "http://127.0.0.1:8000"'


def examples() -> list[str]:
    section = README[README.index("## Python SDK\n"):README.index("## Endpoints\n")]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 3, "expected the sync SDK, async SDK and ccxt examples"
    return blocks


def run_block(code: str, names: dict[str, Any]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), dict(names))  # noqa: S102 - the README's own example
    return out.getvalue()


@pytest.fixture
async def reader(server: Server, kg, make_user, make_key) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """A user as a README reader has one: a key with Trading, and two-factor sign-in enrolled."""
    user = await make_user()
    created = await make_key(user.user_id, ["Trading"])
    totp_secret, _ = await kg.users.begin_totp(OPERATOR, user.user_id)
    await kg.users.confirm_totp(OPERATOR, user.user_id, previous_totp_code(totp_secret))
    return {
        "USER_ID": user.user_id, "API_KEY": created.key.api_key, "SECRET": created.secret,
        "USERNAME": user.username, "PASSWORD": user.password, "TOTP_SECRET": totp_secret,
        "account_id": (await kg.users.require(user.user_id)).account_id,
    }


@pytest.mark.parametrize("index", [0, 1, 2], ids=["sync-sdk", "async-sdk", "ccxt"])
async def test_readme_example_runs_as_written(server: Server, reader: dict[str, Any], index: int) -> None:
    code = examples()[index]
    assert BASE_LINE in code
    code = code.replace(BASE_LINE, f'BASE_URL = "{server.base_url}"')
    output = await asyncio.to_thread(run_block, code, reader)
    assert reader["USERNAME"] in output or str(reader["account_id"]) in output, output
    assert reader["SECRET"] not in output
    if index == 0:
        assert "'Trading'" in output and str(reader["account_id"]) in output
    if index == 2:
        assert f"'id': '{reader['account_id']}'" in output  # fetch_accounts
        assert f"'UserName': '{reader['USERNAME']}'" in output  # after sign_in with the TOTP step
