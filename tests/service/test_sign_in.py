"""Sign-in use cases: key signatures, passwords, TOTP enrolment and the two-step sign-in, locked users."""

from __future__ import annotations

import time

import pyotp
import pytest
from hypothesis import given
from hypothesis import strategies as st
from svc_helpers import CLIENT_IP, key_credentials

from keygate.domain.errors import AuthenticationFailed, InvalidRequest, NotAuthorized
from keygate.service import Keygate
from keygate.service.auth import KeyCredentials, Pending2FA, SessionGrant
from keygate.service.principal import OPERATOR


async def test_key_sign_in_accepts_uppercase_signature_and_string_user_id(kg: Keygate, make_user, make_key) -> None:
    user = await make_user()
    created = await make_key(user.user_id, ["Trading"])
    creds = key_credentials(created)
    parsed = KeyCredentials.parse({"apikey": creds.api_key, "signature": creds.signature.upper(),
                                   "userid": str(user.user_id), "nonce": creds.nonce})
    grant = await kg.auth.authenticate_key(parsed, CLIENT_IP)
    assert grant.user.user_id == user.user_id
    parsed = KeyCredentials.parse({"apikey": creds.api_key, "signature": creds.signature,
                                   "userid": user.user_id, "nonce": int(creds.nonce)})
    await kg.auth.authenticate_key(parsed, CLIENT_IP)


async def test_every_key_refusal_looks_the_same(kg: Keygate, make_user, make_key) -> None:
    user, other = await make_user(), await make_user()
    created = await make_key(user.user_id)
    good = key_credentials(created)
    cases = [
        KeyCredentials("f" * 32, good.signature, good.user_id, good.nonce),  # unknown key
        KeyCredentials(good.api_key, good.signature, 2**31 - 2, good.nonce),  # unknown user
        key_credentials(created, secret="0" * 64),  # wrong signature
    ]
    wrong_user = key_credentials(created)
    cases.append(KeyCredentials(wrong_user.api_key, wrong_user.signature, other.user_id, wrong_user.nonce))  # another user
    messages = set()
    for creds in cases:
        with pytest.raises(AuthenticationFailed) as exc:
            await kg.auth.authenticate_key(creds, CLIENT_IP)
        assert not exc.value.locked
        messages.add((exc.value.message, exc.value.errorcode, exc.value.http_status, exc.value.detail))
    assert len(messages) == 1


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"apikey": "a" * 32, "signature": "0" * 64, "userid": "1"},
        {"apikey": "a" * 32, "signature": "0" * 63, "userid": "1", "nonce": "1"},
        {"apikey": "a" * 32, "signature": "z" * 64, "userid": "1", "nonce": "1"},
        {"apikey": "a" * 32, "signature": "0" * 64, "userid": "one", "nonce": "1"},
        {"apikey": "a" * 32, "signature": "0" * 64, "userid": "1", "nonce": "\x00"},
        {"apikey": "a" * 65, "signature": "0" * 64, "userid": "1", "nonce": "1"},
        {"apikey": ["a"], "signature": "0" * 64, "userid": "1", "nonce": "1"},
        {"apikey": "a" * 32, "signature": "0" * 64, "userid": 1.5, "nonce": "1"},
        {"apikey": "a" * 32, "signature": "0" * 64, "userid": "1", "nonce": 1.5},
    ],
)
def test_malformed_credentials_are_invalid_requests(values: dict[str, object]) -> None:
    with pytest.raises(InvalidRequest):
        KeyCredentials.parse(values)


async def test_password_sign_in(kg: Keygate, make_user) -> None:
    user = await make_user()
    grant = await kg.auth.authenticate_password(user.username, user.password, CLIENT_IP)
    assert isinstance(grant, SessionGrant)
    principal = await kg.auth.principal_for_token(grant.token, CLIENT_IP)
    assert principal.user_id == user.user_id
    # Username match ignores case.
    assert isinstance(await kg.auth.authenticate_password(user.username.upper(), user.password, CLIENT_IP), SessionGrant)
    refusals = set()
    for name, pw in ((user.username, user.password + "x"), ("nosuchuser" + user.username, user.password)):
        with pytest.raises(AuthenticationFailed) as exc:
            await kg.auth.authenticate_password(name, pw, CLIENT_IP)
        refusals.add((exc.value.message, exc.value.locked))
    assert len(refusals) == 1 and not next(iter(refusals))[1]


async def test_totp_enrolment_and_two_step_sign_in(kg: Keygate, make_user) -> None:
    user = await make_user()
    secret, uri = await kg.users.begin_totp(OPERATOR, user.user_id)
    assert uri.startswith("otpauth://totp/") and secret in uri
    totp = pyotp.TOTP(secret)
    # Not active until confirmed: a password alone still signs in.
    assert isinstance(await kg.auth.authenticate_password(user.username, user.password, CLIENT_IP), SessionGrant)
    with pytest.raises(InvalidRequest):
        await kg.users.confirm_totp(OPERATOR, user.user_id, "000000" if totp.now() != "000000" else "111111")
    await kg.users.confirm_totp(OPERATOR, user.user_id, totp.now())
    assert (await kg.users.require(user.user_id)).uses_2fa

    pending = await kg.auth.authenticate_password(user.username, user.password, CLIENT_IP)
    assert isinstance(pending, Pending2FA)
    # The pending token is not a session.
    with pytest.raises(NotAuthorized):
        await kg.auth.principal_for_token(pending.token, CLIENT_IP)
    wrong = "%06d" % ((int(totp.now()) + 500000) % 1000000)
    with pytest.raises(AuthenticationFailed):
        await kg.auth.complete_2fa(pending.token, wrong, CLIENT_IP)
    for bad in (None, "", "abcdef"):
        with pytest.raises((InvalidRequest, AuthenticationFailed)):
            await kg.auth.complete_2fa(pending.token, bad, CLIENT_IP)
    # The next time step's code is also within the standard window, and was not used to enrol.
    grant = await kg.auth.complete_2fa(pending.token, totp.at(time.time() + 30), CLIENT_IP)
    principal = await kg.auth.principal_for_token(grant.token, CLIENT_IP)
    principal.require_password_session()
    # A pending token is good for one success only.
    with pytest.raises(AuthenticationFailed):
        await kg.auth.complete_2fa(pending.token, totp.at(time.time() + 30), CLIENT_IP)
    # A wrong password never reaches the 2FA step.
    with pytest.raises(AuthenticationFailed):
        await kg.auth.authenticate_password(user.username, user.password + "x", CLIENT_IP)


async def test_unknown_pending_token_is_refused(kg: Keygate) -> None:
    for token in ("00000000-0000-0000-0000-000000000000", "x" * 1000):
        with pytest.raises(AuthenticationFailed):
            await kg.auth.complete_2fa(token, "123456", CLIENT_IP)


async def test_locked_is_revealed_only_with_the_right_credentials(kg: Keygate, make_user, make_key) -> None:
    user = await make_user()
    created = await make_key(user.user_id)
    await kg.users.set_locked(OPERATOR, user.user_id, True)
    with pytest.raises(AuthenticationFailed) as exc:
        await kg.auth.authenticate_key(key_credentials(created), CLIENT_IP)
    assert exc.value.locked
    with pytest.raises(AuthenticationFailed) as exc:
        await kg.auth.authenticate_key(key_credentials(created, secret="0" * 64), CLIENT_IP)
    assert not exc.value.locked
    with pytest.raises(AuthenticationFailed) as exc:
        await kg.auth.authenticate_password(user.username, user.password, CLIENT_IP)
    assert exc.value.locked
    with pytest.raises(AuthenticationFailed) as exc:
        await kg.auth.authenticate_password(user.username, user.password + "x", CLIENT_IP)
    assert not exc.value.locked
    await kg.users.set_locked(OPERATOR, user.user_id, False)
    await kg.auth.authenticate_key(key_credentials(created), CLIENT_IP)


async def test_locking_ends_the_users_sessions(kg: Keygate, make_user, make_key, key_session) -> None:
    user = await make_user()
    token = await key_session(await make_key(user.user_id))
    await kg.users.set_locked(OPERATOR, user.user_id, True)
    with pytest.raises(NotAuthorized):
        await kg.auth.principal_for_token(token, CLIENT_IP)
    await kg.users.set_locked(OPERATOR, user.user_id, False)
    with pytest.raises(NotAuthorized):
        await kg.auth.principal_for_token(token, CLIENT_IP)


_ANY = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(st.characters(exclude_categories=()), max_size=80),
                 st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@given(st.fixed_dictionaries({}, optional={"apikey": _ANY, "signature": st.one_of(_ANY, st.text("0123456789abcdefABCDEF", min_size=64, max_size=64)),
                                           "userid": _ANY, "nonce": _ANY}))
def test_credential_parsing_only_ever_refuses_with_invalid_request(values: dict[str, object]) -> None:
    try:
        creds = KeyCredentials.parse(values)
    except InvalidRequest:
        return
    assert creds.api_key.isascii() and creds.nonce.isascii() and 0 < creds.user_id < 2**31
