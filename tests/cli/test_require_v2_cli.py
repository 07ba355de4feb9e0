"""A key that accepts Signature v2 only, made and changed from the command line: ``keygate key create
--require-v2`` and ``keygate key edit --allow-apex / --require-v2``; the service's record says so."""

from __future__ import annotations

import re

import pytest
from cli_support import clean_env, keygate, settings_env

from keygate.config import Settings
from keygate.service import Keygate


@pytest.fixture
def cli_env(kg: Keygate, settings: Settings) -> dict[str, str]:
    return clean_env(**settings_env(settings))


async def test_require_v2_from_the_cli(kg: Keygate, cli_env: dict[str, str], make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    made = keygate("key", "create", "--user", str(user.user_id), "--require-v2", env=cli_env)
    assert made.returncode == 0, made.stderr
    assert "SIGNATURES: v2 (RFC 9421) only" in made.stdout
    api_key = re.search(r"API KEY:\s+(\S+)", made.stdout).group(1)  # type: ignore[union-attr]
    kg.keys._cache.clear()
    assert (await kg.keys.lookup(api_key)).requires_v2  # type: ignore[union-attr]
    edited = keygate("key", "edit", api_key, "--allow-apex", env=cli_env)
    assert edited.returncode == 0, edited.stderr
    assert "signatures APEX and v2" in edited.stdout
    kg.keys._cache.clear()
    assert not (await kg.keys.lookup(api_key)).requires_v2  # type: ignore[union-attr]
