"""Managing users and keys with the CLI, against the session's database (SQLite and PostgreSQL).

Each command runs as a real ``python -m keygate`` process; the results are checked through the
service layer and by authenticating with what the CLI printed.
"""

from __future__ import annotations

import json
import re

import pytest
from cli_support import assert_clean_refusal, clean_env, keygate, settings_env, unique_name

from keygate.config import Settings
from keygate.domain.signature import compute_signature
from keygate.service import Keygate
from keygate.service.auth import KeyCredentials
from keygate.service.principal import OPERATOR

PASSWORD = "a long enough password"


@pytest.fixture
def cli_env(kg: Keygate, settings: Settings) -> dict[str, str]:
    return clean_env(**settings_env(settings))


def create_user(env: dict[str, str], *extra: str) -> str:
    name = unique_name("cli")
    result = keygate("user", "create", name, "--password-stdin", *extra, env=env, input=PASSWORD + "\n")
    assert result.returncode == 0, result.stderr
    return name


def field(output: str, label: str) -> str:
    match = re.search(rf"^{label}:\s+(\S+)$", output, re.MULTILINE)
    assert match, f"{label} missing from:\n{output}"
    return match.group(1)


async def signs_in(kg: Keygate, api_key: str, secret: str, user_id: int, ip: str = "127.0.0.1") -> bool:
    nonce = "1700000000001"
    creds = KeyCredentials.parse(
        {"apikey": api_key, "signature": compute_signature(secret, nonce, user_id, api_key), "userid": str(user_id), "nonce": nonce}
    )
    grant = await kg.auth.authenticate_key(creds, ip)
    await kg.flush()  # settle the session's write before the test blocks on a CLI process
    return grant.user.user_id == user_id


async def test_user_create_and_list(kg: Keygate, cli_env: dict[str, str]) -> None:
    name = unique_name("cli")
    created = keygate("user", "create", name, "--email", f"{name}@example.com", env={**cli_env, "KEYGATE_PASSWORD": PASSWORD})
    assert created.returncode == 0, created.stderr
    user = await kg.users.get_by_name(name)
    assert user is not None
    assert f"created user {name} with UserId {user.user_id}" in created.stdout
    assert PASSWORD not in created.stdout + created.stderr

    admin_name = create_user(cli_env, "--admin")
    rows = {}
    for who in (name, admin_name):  # a page of 50 users: search for each (a username prefix)
        listing = keygate("user", "list", "--search", who, env=cli_env)
        assert listing.returncode == 0, listing.stderr
        rows.update({line.split("\t")[1]: line.split("\t") for line in listing.stdout.splitlines()})
    assert rows[name][0] == str(user.user_id)
    assert rows[name][2] == f"{name}@example.com"
    assert "admin" in rows[admin_name][3]
    assert "admin" not in rows[name][3]


async def test_key_create_prints_credentials_once_and_they_work(kg: Keygate, cli_env: dict[str, str]) -> None:
    name = create_user(cli_env)  # a user made by the CLI, then a key for it
    user = await kg.users.get_by_name(name)
    assert user is not None
    result = keygate("key", "create", "--user", name, "-p", "Trading", "-p", "withdraw", "--ip", "127.0.0.1",
                     "--ip", "2001:db8::/32", "--label", "desk bot", env=cli_env)
    assert result.returncode == 0, result.stderr
    api_key, secret, nonce = field(result.stdout, "API KEY"), field(result.stdout, "API SECRET"), field(result.stdout, "NONCE")
    assert re.fullmatch(r"[0-9a-f]{32}", api_key)
    assert re.fullmatch(r"[0-9a-f]{64}", secret)
    assert nonce.isdigit()
    assert field(result.stdout, "USER ID") == str(user.user_id)
    assert "Trading, Withdraw" in result.stdout
    assert "127.0.0.1, 2001:db8::/32" in result.stdout

    [stored] = await kg.keys.list(OPERATOR, user.user_id)
    assert stored.api_key == api_key
    assert stored.label == "desk bot"
    assert stored.nonce == nonce
    assert await signs_in(kg, api_key, secret, user.user_id)


async def test_key_create_json(kg: Keygate, cli_env: dict[str, str], make_user) -> None:  # type: ignore[no-untyped-def]
    made = await make_user()
    _name, user = made.username, await kg.users.require(made.user_id)
    result = keygate("key", "create", "--user", str(user.user_id), "--permission", "Deposit", "--json", env=cli_env)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["UserId"] == user.user_id
    assert data["Permissions"] == ["Deposit"]
    assert data["IpAllowlist"] == []
    assert {"APIKey", "APISecret", "Nonce"} <= data.keys()
    assert await signs_in(kg, data["APIKey"], data["APISecret"], user.user_id, ip="203.0.113.9")


async def test_key_list_never_shows_the_secret(cli_env: dict[str, str], make_user, make_key) -> None:  # type: ignore[no-untyped-def]
    made = await make_user()
    name = made.username
    first = (await make_key(made.user_id, label="one")).reveal()
    second = (await make_key(made.user_id, ["Trading"], ["10.0.0.0/8"])).reveal()

    text = keygate("key", "list", "--user", name, env=cli_env)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert len(lines) == 2
    by_key = {line.split("\t")[0]: line for line in lines}
    assert "one" in by_key[first["APIKey"]] and "read-only" in by_key[first["APIKey"]] and "any IP" in by_key[first["APIKey"]]
    assert "Trading" in by_key[second["APIKey"]] and "10.0.0.0/8" in by_key[second["APIKey"]]

    as_json = keygate("key", "list", "--user", name, "--json", env=cli_env)
    assert as_json.returncode == 0, as_json.stderr
    listed = json.loads(as_json.stdout)
    assert {k["APIKey"] for k in listed} == {first["APIKey"], second["APIKey"]}
    for output in (text.stdout, as_json.stdout):
        assert first["APISecret"] not in output
        assert second["APISecret"] not in output
    assert all("APISecret" not in k for k in listed)


async def test_key_edit(kg: Keygate, cli_env: dict[str, str], make_user, make_key) -> None:  # type: ignore[no-untyped-def]
    made = await make_user()
    user = await kg.users.require(made.user_id)
    created = (await make_key(made.user_id, ["Trading"])).reveal()
    api_key = created["APIKey"]

    edited = keygate("key", "edit", api_key, "-p", "Withdraw", "-p", "Deposit", "--ip", "192.0.2.0/24", "--label", "renamed", env=cli_env)
    assert edited.returncode == 0, edited.stderr
    assert "new rights on every server" in edited.stdout
    [stored] = await kg.keys.list(OPERATOR, user.user_id)
    assert sorted(p.value for p in stored.permissions) == ["Deposit", "Withdraw"]
    assert stored.ip_allowlist.as_strings() == ["192.0.2.0/24"]
    assert stored.label == "renamed"

    label_only = keygate("key", "edit", api_key, "--label", "just a label", env=cli_env)
    assert label_only.returncode == 0, label_only.stderr
    assert "sessions were ended" not in label_only.stdout

    cleared = keygate("key", "edit", api_key, "--read-only", "--any-ip", env=cli_env)
    assert cleared.returncode == 0, cleared.stderr
    [stored] = await kg.keys.list(OPERATOR, user.user_id)
    assert stored.permissions == frozenset()
    assert stored.ip_allowlist.allows_any
    assert stored.label == "just a label"
    assert created["APISecret"] not in edited.stdout + label_only.stdout + cleared.stdout


async def test_key_delete(kg: Keygate, cli_env: dict[str, str], make_user, make_key) -> None:  # type: ignore[no-untyped-def]
    made = await make_user()
    user = await kg.users.require(made.user_id)
    created = (await make_key(made.user_id)).reveal()
    deleted = keygate("key", "delete", created["APIKey"], env=cli_env)
    assert deleted.returncode == 0, deleted.stderr
    assert f"deleted {created['APIKey']}" in deleted.stdout
    assert await kg.keys.list(OPERATOR, user.user_id) == []
    assert_clean_refusal(keygate("key", "delete", created["APIKey"], env=cli_env), "not found")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("key", "create", "--user", "nobody-by-this-name"), ("no such user", "nobody-by-this-name")),
        (("key", "list", "--user", "987654321"), ("no such user", "987654321")),
        (("key", "create", "--user", "{user}", "--ip", "10.0.0.0/33"), ("10.0.0.0/33", "CIDR")),
        (("key", "create", "--user", "{user}", "--ip", "127.0.0.1", "--ip", "not-an-ip"), ("not-an-ip",)),
        (("key", "create", "--user", "{user}", "-p", "Trading", "-p", "Admin"), ("unknown permission", "Admin")),
        (("key", "edit", "0" * 32, "--label", "x"), ("API key not found",)),
        (("user", "create", "{user}x", "--password-stdin"), ("at least 10 characters",)),
    ],
    ids=["unknown-user", "unknown-user-id", "bad-cidr", "bad-ip", "bad-permission", "unknown-key", "short-password"],
)
async def test_errors_are_clear_and_change_nothing(
    kg: Keygate, cli_env: dict[str, str], make_user, args: tuple[str, ...], fragments: tuple[str, ...]  # type: ignore[no-untyped-def]
) -> None:
    made = await make_user()
    name, user = made.username, await kg.users.require(made.user_id)
    users_before = await kg.users.count()
    result = keygate(*(a.replace("{user}", name) for a in args), env=cli_env, input="short\n")
    assert_clean_refusal(result, *fragments)
    assert await kg.keys.list(OPERATOR, user.user_id) == []
    assert await kg.users.count() == users_before

