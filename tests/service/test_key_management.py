"""Key management use cases: create, list, update, delete; who may do what; secrets stay secret."""

from __future__ import annotations

import pytest
from svc_helpers import CLIENT_IP, count_rows, key_credentials, table_rows

from keygate.domain.errors import AuthenticationFailed, Forbidden, InvalidRequest, KeygateError, NotAuthorized
from keygate.domain.iprules import IpAllowlist
from keygate.domain.permissions import Permission, parse_permissions
from keygate.service import Keygate
from keygate.service.principal import OPERATOR


async def test_create_list_update_delete(kg: Keygate, make_user, password_principal) -> None:
    user = await make_user()
    me = await password_principal(user.username, user.password)
    created = await kg.keys.create(me, user.user_id, parse_permissions(["trading"]), IpAllowlist.parse(["10.0.0.0/8"]), "bot one")
    assert len(created.key.api_key) == 32 and len(created.secret) >= 32
    assert created.reveal()["APISecret"] == created.secret
    assert created.reveal()["Permissions"] == ["Trading"]

    listed = await kg.keys.list(me, user.user_id)
    assert [k.api_key for k in listed] == [created.key.api_key]
    view = listed[0].public_view()
    assert view["Label"] == "bot one" and view["Permissions"] == ["Trading"] and view["IpAllowlist"] == ["10.0.0.0/8"]
    assert view["Nonce"] == created.key.nonce

    key = await kg.keys.update(me, user.user_id, created.key.api_key, permissions=parse_permissions(["Withdraw", "Deposit"]),
                               ip_allowlist=IpAllowlist(), label="renamed")
    again = (await kg.keys.list(me, user.user_id))[0].public_view()
    assert again["Permissions"] == ["Withdraw", "Deposit"] and again["IpAllowlist"] == [] and again["Label"] == "renamed"
    assert key.api_key == created.key.api_key
    # The secret is unchanged by an edit: the old signature still works.
    await kg.auth.authenticate_key(key_credentials(created), CLIENT_IP)

    await kg.keys.delete(me, user.user_id, created.key.api_key)
    assert await kg.keys.list(me, user.user_id) == []
    with pytest.raises(AuthenticationFailed):
        await kg.auth.authenticate_key(key_credentials(created), CLIENT_IP)


async def test_update_leaves_omitted_fields(kg: Keygate, make_user, make_key) -> None:
    user = await make_user()
    created = await make_key(user.user_id, ["Trading"], ["192.0.2.1"], "keep")
    owner = OPERATOR
    key = await kg.keys.update(owner, user.user_id, created.key.api_key, label="new label")
    assert key.permissions == {Permission.TRADING} and key.ip_allowlist.as_strings() == ["192.0.2.1"]
    stored = (await kg.keys.list(owner, user.user_id))[0]
    assert stored.label == "new label" and stored.permissions == {Permission.TRADING}


async def test_bad_label_is_refused_and_changes_nothing(kg: Keygate, make_user, make_key) -> None:
    user = await make_user()
    created = await make_key(user.user_id, label="ok")
    owner = OPERATOR
    for bad in ("x" * 101, "tab\there"):
        with pytest.raises(InvalidRequest):
            await kg.keys.update(owner, user.user_id, created.key.api_key, label=bad)
        with pytest.raises(InvalidRequest):
            await kg.keys.create(owner, user.user_id, frozenset(), IpAllowlist(), bad)
    assert [k.label for k in await kg.keys.list(owner, user.user_id)] == ["ok"]


async def test_unknown_key_is_not_found(kg: Keygate, make_user) -> None:
    user = await make_user()
    owner = OPERATOR
    for bad in ("0" * 32, "", "x" * 200, "\x00", "é" * 10):
        with pytest.raises(KeygateError) as exc:
            await kg.keys.delete(owner, user.user_id, bad)
        assert exc.value.http_status == 404
        with pytest.raises(KeygateError) as exc:
            await kg.keys.update(owner, user.user_id, bad, label="x")
        assert exc.value.http_status == 404


async def test_secret_never_in_listings_nor_in_the_database(kg: Keygate, make_user, make_key, key_session) -> None:
    user = await make_user()
    created = await make_key(user.user_id, ["Trading"], label="secretive")
    await key_session(created)
    await kg.flush()
    owner = OPERATOR
    for key in await kg.keys.list(owner, user.user_id):
        view = key.public_view()
        assert "APISecret" not in view
        assert created.secret not in repr(view)
        assert created.secret not in repr(key)
    needles = [created.secret.encode(), created.secret.upper().encode(), bytes.fromhex(created.secret)]
    for table in ("api_keys", "sessions", "audit_events", "users"):
        for row in await table_rows(kg, table):
            for value in row:
                blob = value if isinstance(value, (bytes, bytearray, memoryview)) else str(value).encode()
                for needle in needles:
                    assert needle not in bytes(blob), f"secret found in {table}"


async def test_session_token_is_stored_only_as_a_hash(kg: Keygate, make_user, make_key, key_session) -> None:
    user = await make_user()
    token = await key_session(await make_key(user.user_id))
    await kg.flush()
    rows = await table_rows(kg, "sessions")
    assert rows
    for row in rows:
        assert all(token not in str(v) and token.replace("-", "") not in str(v) for v in row)


async def test_key_made_principal_cannot_manage_keys(kg: Keygate, make_user, make_key, key_session) -> None:
    user = await make_user()
    created = await make_key(user.user_id, ["Trading", "Withdraw", "Deposit"])
    principal = await kg.auth.principal_for_token(await key_session(created), CLIENT_IP)
    signed = await kg.auth.principal_for_signature(key_credentials(created), CLIENT_IP)
    for p in (principal, signed):
        for attempt in (
            kg.keys.create(p, user.user_id, frozenset(), IpAllowlist()),
            kg.keys.update(p, user.user_id, created.key.api_key, permissions=frozenset()),
            kg.keys.delete(p, user.user_id, created.key.api_key),
        ):
            with pytest.raises(Forbidden) as exc:
                await attempt
            assert exc.value.errorcode == 20 and exc.value.http_status == 403
    owner = OPERATOR
    keys = await kg.keys.list(owner, user.user_id)
    assert len(keys) == 1 and keys[0].permissions == {Permission.TRADING, Permission.WITHDRAW, Permission.DEPOSIT}


async def test_user_cannot_touch_another_users_keys(kg: Keygate, make_user, make_key, password_principal) -> None:
    alice, bob = await make_user(), await make_user()
    bobs = await make_key(bob.user_id, ["Trading"], label="bob's")
    as_alice = await password_principal(alice.username, alice.password)
    for attempt in (
        kg.keys.list(as_alice, bob.user_id),
        kg.keys.create(as_alice, bob.user_id, frozenset(), IpAllowlist()),
        kg.keys.update(as_alice, bob.user_id, bobs.key.api_key, label="pwned"),
        kg.keys.update(as_alice, alice.user_id, bobs.key.api_key, label="pwned"),
        kg.keys.delete(as_alice, bob.user_id, bobs.key.api_key),
        kg.keys.delete(as_alice, alice.user_id, bobs.key.api_key),
    ):
        with pytest.raises(KeygateError) as exc:
            await attempt
        assert exc.value.http_status in (403, 404)
    bob_owner = OPERATOR
    keys = await kg.keys.list(bob_owner, bob.user_id)
    assert [(k.api_key, k.label) for k in keys] == [(bobs.key.api_key, "bob's")]


async def test_admin_with_password_session_manages_any_users_keys(kg: Keygate, make_user, make_key, password_principal, key_session) -> None:
    admin, bob = await make_user(admin=True), await make_user()
    bobs = await make_key(bob.user_id, ["Trading"])
    as_admin = await password_principal(admin.username, admin.password)
    assert [k.api_key for k in await kg.keys.list(as_admin, bob.user_id)] == [bobs.key.api_key]
    made = await kg.keys.create(as_admin, bob.user_id, frozenset(), IpAllowlist(), "by admin")
    assert made.key.user_id == bob.user_id
    await kg.keys.update(as_admin, bob.user_id, bobs.key.api_key, label="edited by admin")
    await kg.keys.delete(as_admin, bob.user_id, made.key.api_key)
    bob_owner = OPERATOR
    assert [(k.api_key, k.label) for k in await kg.keys.list(bob_owner, bob.user_id)] == [(bobs.key.api_key, "edited by admin")]

    # The same admin signed in with an API key has no admin rights.
    admin_key = await make_key(admin.user_id, ["Trading"])
    as_admin_key = await kg.auth.principal_for_token(await key_session(admin_key), CLIENT_IP)
    with pytest.raises(KeygateError):
        await kg.keys.list(as_admin_key, bob.user_id)


async def _alive(kg: Keygate, token: str) -> bool:
    try:
        await kg.auth.principal_for_token(token, CLIENT_IP)
    except NotAuthorized:
        return False
    return True


async def test_deleting_a_key_ends_its_sessions_at_once(kg: Keygate, make_user, make_key, key_session) -> None:
    user = await make_user()
    created, other = await make_key(user.user_id), await make_key(user.user_id)
    tokens = [await key_session(created), await key_session(created)]
    other_token = await key_session(other)
    assert all([await _alive(kg, t) for t in tokens])
    owner = OPERATOR
    await kg.keys.delete(owner, user.user_id, created.key.api_key)
    assert not any([await _alive(kg, t) for t in tokens])
    assert await _alive(kg, other_token)
    assert await count_rows(kg, "sessions", "api_key = :k", k=created.key.api_key) == 0


@pytest.mark.parametrize(
    "change",
    [{"permissions": frozenset({Permission.TRADING})}, {"ip_allowlist": IpAllowlist.parse(["127.0.0.1", "10.0.0.0/8"])}],
    ids=["permissions", "allowlist"],
)
async def test_changing_rights_reaches_the_keys_live_sessions(kg: Keygate, make_user, make_key, key_session, change) -> None:
    user = await make_user()
    created = await make_key(user.user_id, ["Trading", "Withdraw"], ["127.0.0.1"])
    token = await key_session(created)
    assert await _alive(kg, token)
    await kg.keys.update(OPERATOR, user.user_id, created.key.api_key, **change)
    # The session made before the change has the key's rights as they are now, never a copy.
    principal = await kg.auth.principal_for_token(token, CLIENT_IP)
    assert principal.permissions == (change.get("permissions") or {Permission.TRADING, Permission.WITHDRAW})
    await kg.keys.update(OPERATOR, user.user_id, created.key.api_key, ip_allowlist=IpAllowlist.parse(["192.0.2.9"]))
    assert not await _alive(kg, token), "an allowlist that no longer holds the session's address refuses it"


async def test_label_only_change_keeps_sessions(kg: Keygate, make_user, make_key, key_session) -> None:
    user = await make_user()
    created = await make_key(user.user_id, ["Trading"], ["127.0.0.1"])
    token = await key_session(created)
    owner = OPERATOR
    await kg.keys.update(owner, user.user_id, created.key.api_key, label="just a name",
                         permissions=frozenset({Permission.TRADING}), ip_allowlist=IpAllowlist.parse(["127.0.0.1"]))
    assert await _alive(kg, token)


async def test_key_session_has_exactly_the_keys_permissions(kg: Keygate, make_user, make_key, key_session) -> None:
    user = await make_user()
    for perms in ([], ["Trading"], ["Withdraw", "Deposit"]):
        created = await make_key(user.user_id, perms)
        principal = await kg.auth.principal_for_token(await key_session(created), CLIENT_IP)
        assert principal.permissions == parse_permissions(perms)
        for p in Permission:
            if p.value in perms:
                principal.require_permission(p)
            else:
                with pytest.raises(Forbidden):
                    principal.require_permission(p)


async def test_allowlist_is_enforced_at_sign_in_and_on_the_session(kg: Keygate, make_user, make_key) -> None:
    user = await make_user()
    created = await make_key(user.user_id, ips=["192.0.2.0/24"])
    with pytest.raises(AuthenticationFailed):
        await kg.auth.authenticate_key(key_credentials(created), CLIENT_IP)
    grant = await kg.auth.authenticate_key(key_credentials(created), "192.0.2.77")
    assert (await kg.auth.principal_for_token(grant.token, "192.0.2.77")).user_id == user.user_id
    with pytest.raises(NotAuthorized):
        await kg.auth.principal_for_token(grant.token, CLIENT_IP)


async def test_switching_a_key_to_signature_v2_only_ends_its_sessions_and_its_rotation_grace(kg: Keygate, make_user) -> None:
    user = await make_user()
    created = await kg.keys.create(OPERATOR, user.user_id, frozenset(), IpAllowlist())
    token = (await kg.auth.authenticate_key(key_credentials(created), CLIENT_IP)).token
    rotated = await kg.keys.rotate_secret(OPERATOR, user.user_id, created.key.api_key, grace_seconds=600)
    assert kg.keys.previous_material_of(rotated.key) is not None
    assert (await kg.auth.principal_for_token(token, CLIENT_IP)).api_key == created.key.api_key  # in the grace
    switched = await kg.keys.update(OPERATOR, user.user_id, created.key.api_key, requires_v2=True)
    assert switched.requires_v2 and kg.keys.previous_material_of(switched) is None
    with pytest.raises(NotAuthorized):
        await kg.auth.principal_for_token(token, CLIENT_IP)
    await kg.flush()
