"""Random headers and bodies at AuthenticateUser and the key endpoints.

Whatever arrives, the answer is a 4xx with an APEX-shaped JSON body or a legitimate 200, never a
500, and a refusal changes nothing in the database. A 200 from a key endpoint is checked to have
changed exactly what the caller owns and asked for, and nothing of another user's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from api_helpers import is_apex_error, password_token, snapshot
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from keygate.domain.iprules import IpAllowlist
from keygate.domain.permissions import parse_permissions
from keygate.service import Keygate
from keygate.service.keys import CreatedKey
from keygate.service.principal import OPERATOR

FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

CREDENTIAL_NAMES = ["APIKey", "Signature", "UserId", "Nonce", "apikey", "SIGNATURE", "userid", "nonce"]
OTHER_NAMES = ["Authorization", "Pending2FaToken", "X-Forwarded-For", "Content-Type", "X-Anything"]
FIELD_NAMES = ["APIKey", "Signature", "UserId", "Nonce", "UserName", "Password", "SessionToken", "Permissions",
               "IpAllowlist", "IpAddresses", "Label", "Code", "apikey", "userid", "permissions", "label"]


@dataclass
class World:
    """The fuzzed user (with a password session), their current key, and a bystander with a key."""

    user_id: int
    username: str
    token: str
    own: CreatedKey
    other_user_id: int
    other: CreatedKey


@pytest.fixture
async def world(client: httpx.AsyncClient, make_user, make_key) -> World:
    user, bystander = await make_user(), await make_user()
    own = await make_key(user.user_id, ["Trading"], ["198.18.0.0/15"], "mine")
    other = await make_key(bystander.user_id, ["Withdraw"], [], "theirs")
    token = await password_token(client, user.username, user.password)
    return World(user.user_id, user.username, token, own, bystander.user_id, other)


def header_values(w_api_key: str, w_user_id: int) -> st.SearchStrategy[bytes]:
    interesting = st.sampled_from([
        b"", b" ", w_api_key.encode(), str(w_user_id).encode(), b"0", b"-1", b"99999999999999999999", b"1.5",
        b"ab" * 32, b"AB" * 32, b"zz" * 32, b"ab" * 31, b"f" * 32, b"\xc2\xb2", b"\xff\xfe", b"a" * 600, b"\t1\t",
        b"Basic " + b"YTpi", b"Basic !!", b"null", b"[]", b"{}",
    ])
    raw = st.binary(max_size=80).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"").replace(b"\x00", b""))
    return st.one_of(interesting, raw, st.integers().map(lambda i: str(i).encode()))


# Any code point, lone surrogates and NUL included: JSON can carry them all as escapes.
ANY_TEXT = st.one_of(
    st.text(st.characters(exclude_categories=()), max_size=40),
    st.sampled_from(["\ud800", "a\udfffb", "\x00", "a\x00b", "\u2028", "\u00b2", "\ufeff", "\U0001f600", " ", "\t\n"]),
)


def json_values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=False),
        ANY_TEXT, st.sampled_from(["Trading", "withdraw", "Deposit", "Admin", "10.0.0.1", "::1", "10.0.0.0/33", "ab" * 32]),
    )
    return st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=3)), max_leaves=8)


def bodies(extra_values: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes | None]:
    objects = st.dictionaries(st.one_of(st.sampled_from(FIELD_NAMES), ANY_TEXT), st.one_of(extra_values, json_values()), max_size=6)
    return st.one_of(
        st.none(),
        st.binary(max_size=200),
        objects.map(lambda d: json.dumps(d).encode()),
        json_values().map(lambda v: json.dumps(v).encode()),
        objects.map(lambda d: json.dumps(d)[:-1].encode()),  # truncated
    )


def sign_in_bodies(world: "World") -> st.SearchStrategy[bytes]:
    """JSON bodies shaped like each sign-in form, with odd values in the fields."""
    any_value = st.one_of(ANY_TEXT, json_values())
    key_form = st.fixed_dictionaries({}, optional={
        "APIKey": st.one_of(st.just(world.own.key.api_key), any_value),
        "Signature": st.one_of(st.text("0123456789abcdefABCDEF", min_size=64, max_size=64), any_value),
        "UserId": st.one_of(st.just(world.user_id), st.just(str(world.user_id)), any_value),
        "Nonce": any_value,
    })
    password_form = st.fixed_dictionaries({"UserName": st.one_of(st.just(world.username), any_value), "Password": any_value})
    resume_form = st.fixed_dictionaries({"SessionToken": any_value})
    return st.one_of(key_form, password_form, resume_form).map(lambda d: json.dumps(d).encode())


def query_params() -> st.SearchStrategy[dict[str, str]]:
    """Query strings: APEX merges them into the payload, so they are input too (no surrogates: URLs are UTF-8)."""
    text = st.one_of(st.text(st.characters(exclude_categories=("Cs",)), max_size=30), st.sampled_from(["\x00", "-1", "0" * 40, "\u00b2"]))
    return st.dictionaries(st.sampled_from(FIELD_NAMES), text, max_size=3)


def assert_apex_reply(r: httpx.Response) -> None:
    assert r.status_code != 500 and r.status_code < 500, (r.status_code, r.text)
    assert "Traceback" not in r.text
    if r.status_code != 200:
        assert is_apex_error(r), (r.status_code, r.text)
    else:
        json.loads(r.content)


@given(data=st.data())
@FUZZ
async def test_authenticate_user_fuzz(client: httpx.AsyncClient, kg: Keygate, world: World, data: st.DataObject) -> None:
    values = header_values(world.own.key.api_key, world.user_id)
    names = st.one_of(st.sampled_from(CREDENTIAL_NAMES + OTHER_NAMES), st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,15}", fullmatch=True))
    headers = data.draw(st.dictionaries(names, values, max_size=6), label="headers")
    body = data.draw(st.one_of(sign_in_bodies(world), bodies(st.sampled_from([world.own.key.api_key, world.user_id, world.username]))), label="body")
    method = data.draw(st.sampled_from(["GET", "POST"]), label="method")
    path = data.draw(st.sampled_from(["/AP/AuthenticateUser", "/ap/authenticateuser", "/AP/Authenticate", "/AP/WebAuthenticateUser"]), label="path")
    query = data.draw(query_params(), label="query")
    before = await snapshot(kg)
    r = await client.request(method, path, headers=headers, content=body, params=query)
    assert_apex_reply(r)
    # Random input never holds a valid signature or password.
    assert r.status_code != 200, r.text
    assert r.json()["Authenticated"] is False
    assert world.own.secret not in r.text
    assert await snapshot(kg) == before


def _key_row(snap: dict[str, Any], api_key: str) -> tuple[Any, ...] | None:
    return next((row for row in snap["keys"] if row[0] == api_key), None)


def _without(snap: dict[str, Any], api_keys: set[str]) -> dict[str, Any]:
    return {**snap, "keys": [row for row in snap["keys"] if row[0] not in api_keys]}


@given(data=st.data())
@FUZZ
async def test_key_endpoints_fuzz(client: httpx.AsyncClient, kg: Keygate, world: World, data: st.DataObject) -> None:
    endpoint = data.draw(st.sampled_from(["AddUserAPIKey", "GetUserAPIKeys", "UpdateUserAPIKey", "RemoveUserAPIKey"]), label="endpoint")
    user_ids = st.one_of(st.sampled_from([world.user_id, str(world.user_id)]),
                         st.sampled_from([world.other_user_id, str(world.other_user_id), 0, -1, "x", 2**31, None, [world.user_id]]), json_values())
    api_keys = st.one_of(st.just(world.own.key.api_key),
                         st.sampled_from([world.other.key.api_key, "f" * 32, "", None, 5, [world.own.key.api_key], world.own.key.api_key.upper()]))
    good_perms = st.lists(st.sampled_from(["Trading", "withdraw", "DEPOSIT"]), max_size=3)
    good_ips = st.lists(st.ip_addresses().map(str), max_size=3)
    good_labels = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FFF, exclude_categories=("Cs", "Cc")), max_size=50)
    perms = st.one_of(good_perms, st.lists(st.sampled_from(["Trading", "Admin", "", 1, None]), max_size=4), json_values())
    ips = st.one_of(good_ips, st.lists(st.one_of(st.sampled_from(["10.0.0.0/8", "2001:db8::/32", "300.1.1.1", "x", ""]), ANY_TEXT), max_size=4), json_values())
    labels = st.one_of(good_labels, st.text(max_size=120), ANY_TEXT, json_values())
    fields = st.fixed_dictionaries({}, optional={"UserId": user_ids, "APIKey": api_keys, "Permissions": perms, "IpAllowlist": ips, "Label": labels})
    # Mostly well-formed edits of the caller's own key, so that legitimate 200s are exercised too.
    own_edit = st.fixed_dictionaries({"APIKey": st.just(world.own.key.api_key)}, optional={
        "UserId": st.sampled_from([world.user_id, str(world.user_id)]), "Permissions": st.one_of(good_perms, perms),
        "IpAllowlist": st.one_of(good_ips, ips), "Label": st.one_of(good_labels, labels),
    })
    structured = fields.map(lambda d: json.dumps(d).encode())
    edits = own_edit.map(lambda d: json.dumps(d).encode())
    payload = data.draw(st.one_of(structured, edits, structured, edits, bodies(st.nothing())), label="body")
    extra = data.draw(st.dictionaries(st.sampled_from(CREDENTIAL_NAMES + OTHER_NAMES), header_values(world.own.key.api_key, world.user_id), max_size=3), label="extra headers")
    method = data.draw(st.sampled_from(["GET", "POST"]), label="method")

    query = data.draw(query_params(), label="query")
    before = await snapshot(kg)
    r = await client.request(method, f"/AP/{endpoint}", headers={**extra, "aptoken": world.token}, content=payload, params=query)
    event(f"{endpoint} -> {r.status_code}")
    assert_apex_reply(r)
    after = await snapshot(kg)
    # A bystander's key never changes, whatever the request.
    assert _key_row(after, world.other.key.api_key) == _key_row(before, world.other.key.api_key)
    assert after["users"] == before["users"] and after["sessions"] == before["sessions"]
    if r.status_code != 200:
        assert after == before
        return
    body = r.json()
    assert world.other.secret not in r.text
    if endpoint == "GetUserAPIKeys":
        assert after == before
        assert all(k["UserId"] == world.user_id for k in body) and all("APISecret" not in k for k in body)
    elif endpoint == "AddUserAPIKey":
        assert body["UserId"] == world.user_id and body["APISecret"]
        new = {row[0] for row in after["keys"]} - {row[0] for row in before["keys"]}
        assert new == {body["APIKey"]}
        assert _without(after, new) == before
        await kg.keys.delete(OPERATOR, world.user_id, body["APIKey"])
    elif endpoint == "UpdateUserAPIKey":
        assert body["APIKey"] == world.own.key.api_key and body["UserId"] == world.user_id
        assert _without(after, {world.own.key.api_key}) == _without(before, {world.own.key.api_key})
        old_row, new_row = _key_row(before, world.own.key.api_key), _key_row(after, world.own.key.api_key)
        assert old_row is not None and new_row is not None
        assert new_row[:2] == old_row[:2] and new_row[5] == old_row[5]  # same key, owner and sealed secret
    else:
        assert body == {"result": True, "errormsg": None, "errorcode": 0, "detail": None}
        assert _key_row(after, world.own.key.api_key) is None
        assert _without(before, {world.own.key.api_key}) == after
        owner = OPERATOR
        world.own = await kg.keys.create(owner, world.user_id, parse_permissions(["Trading"]), IpAllowlist.parse(["198.18.0.0/15"]), "mine")


@given(data=st.data())
@FUZZ
async def test_key_endpoints_without_a_session_fuzz(client: httpx.AsyncClient, kg: Keygate, world: World, data: st.DataObject) -> None:
    endpoint = data.draw(st.sampled_from(["AddUserAPIKey", "GetUserAPIKeys", "UpdateUserAPIKey", "RemoveUserAPIKey"]), label="endpoint")
    names = st.sampled_from(CREDENTIAL_NAMES + OTHER_NAMES + ["aptoken", "APToken"])
    headers = data.draw(st.dictionaries(names, header_values(world.own.key.api_key, world.user_id), max_size=5), label="headers")
    body = data.draw(bodies(st.sampled_from([world.own.key.api_key, world.other.key.api_key, world.user_id])), label="body")
    before = await snapshot(kg)
    r = await client.post(f"/AP/{endpoint}", headers=headers, content=body)
    assert_apex_reply(r)
    assert r.status_code != 200, r.text
    assert await snapshot(kg) == before
