"""``keygate user list``, ``key list`` and ``session list`` a page at a time, with a search (a user id,
a username prefix, an API-key prefix), as an operator runs them; the rows keep their format."""

from __future__ import annotations

import pytest
from cli_support import clean_env, keygate, settings_env

from keygate.config import Settings
from keygate.service import Keygate
from listing_support import Seeded, seed

COUNT = 60


@pytest.fixture(scope="module")
async def seeded(kg: Keygate) -> Seeded:
    return await seed(kg, COUNT)


@pytest.fixture
def cli_env(kg: Keygate, settings: Settings) -> dict[str, str]:
    return clean_env(**settings_env(settings))


def _run(env: dict[str, str], *args: str) -> tuple[list[list[str]], str]:
    result = keygate(*args, env=env)
    assert result.returncode == 0, result.stderr
    return [line.split("\t") for line in result.stdout.splitlines()], result.stderr


async def test_user_list_pages_and_searches(cli_env: dict[str, str], seeded: Seeded) -> None:
    rows, more = _run(cli_env, "user", "list", "--search", seeded.tag.upper(), "--page", "2")  # 50 a page
    assert [r[1] for r in rows] == [seeded.name(i) for i in range(50, 60)] and "--page" not in more
    assert [r[0] for r in rows] == [str(i) for i in seeded.user_ids[50:]]
    rows, _ = _run(cli_env, "user", "list", "--search", str(seeded.user_ids[9]))
    assert rows == [[str(seeded.user_ids[9]), seeded.name(9), "", ""]]

    refused = keygate("user", "list", "--limit", "0", env=cli_env)
    assert refused.returncode == 2 and "page size" in refused.stderr and "Traceback" not in refused.stderr


async def test_key_and_session_list_by_user_and_search(cli_env: dict[str, str], seeded: Seeded) -> None:
    user_id = seeded.user_ids[17]
    api_key = seeded.keys[user_id]
    rows, _ = _run(cli_env, "key", "list", "--user", seeded.name(17))
    assert [r[0] for r in rows] == [api_key] and rows[0][1] == "seeded" and rows[0][3] == "any IP"  # the old format
    rows, _ = _run(cli_env, "key", "list", "--search", api_key[:10])
    assert [r[:2] for r in rows] == [[str(user_id), api_key]]  # every user's keys: the owner's id first
    rows, more = _run(cli_env, "key", "list", "--search", seeded.tag, "--limit", "25", "--page", "2")
    assert [r[1] for r in rows] == [seeded.keys[i] for i in seeded.user_ids[25:50]] and "--page 3" in more

    rows, more = _run(cli_env, "session", "list", "--search", seeded.tag, "--limit", "20")
    assert [r[:4] for r in rows] == [[str(i), seeded.name(n), "password", "-"] for n, i in enumerate(seeded.user_ids[:20])]
    assert "--page 2" in more
    for row in rows:
        assert not any(seeded.sessions[i] in "\t".join(row) for i in seeded.user_ids)  # never a token hash
