"""Idle and absolute session expiry, on a Keygate built with tiny limits."""

from __future__ import annotations

import asyncio
import time

import pytest
from svc_helpers import CLIENT_IP, count_rows, key_credentials

from keygate.config import Settings
from keygate.domain.errors import NotAuthorized
from keygate.domain.iprules import IpAllowlist
from keygate.service import Keygate
from keygate.service.principal import OPERATOR


async def _short_lived(settings: Settings, idle: int, absolute: int) -> Keygate:
    service = Keygate(settings.model_copy(update=dict(session_idle_seconds=idle, session_max_seconds=absolute)))
    await service.start(bootstrap_admin=False)
    return service


async def _key_token(service: Keygate, user_id: int) -> tuple[str, object]:
    owner = OPERATOR
    created = await service.keys.create(owner, user_id, frozenset(), IpAllowlist())
    grant = await service.auth.authenticate_key(key_credentials(created), CLIENT_IP)
    return grant.token, created


async def test_idle_expiry(settings: Settings, make_user) -> None:
    """Key and password sessions end after the idle time, also as seen by another instance on the same database."""
    user = await make_user()
    service = await _short_lived(settings, idle=2, absolute=3600)
    other = await _short_lived(settings, idle=2, absolute=3600)
    try:
        token, _ = await _key_token(service, user.user_id)
        grant = await service.auth.authenticate_password(user.username, user.password, CLIENT_IP)
        for t in (token, grant.token):  # type: ignore[union-attr]
            await service.auth.principal_for_token(t, CLIENT_IP)
            await other.auth.principal_for_token(t, CLIENT_IP)
        await asyncio.sleep(2.2)
        for t in (token, grant.token):  # type: ignore[union-attr]
            with pytest.raises(NotAuthorized):
                await other.auth.principal_for_token(t, CLIENT_IP)
            with pytest.raises(NotAuthorized):
                await service.auth.principal_for_token(t, CLIENT_IP)
        # An expired session is gone for good, from the database too.
        await service.flush()
        assert await count_rows(service, "sessions", "user_id = :u", u=user.user_id) == 0
    finally:
        await service.close()
        await other.close()


async def test_activity_keeps_a_session_alive(settings: Settings, make_user) -> None:
    user = await make_user()
    service = await _short_lived(settings, idle=2, absolute=3600)
    try:
        token, _ = await _key_token(service, user.user_id)
        for _ in range(3):
            await asyncio.sleep(1.2)
            await service.auth.principal_for_token(token, CLIENT_IP)
        # 3.6 s after sign-in, longer than the idle limit, still alive because it was used.
        await asyncio.sleep(2.3)
        with pytest.raises(NotAuthorized):
            await service.auth.principal_for_token(token, CLIENT_IP)
    finally:
        await service.close()


async def test_absolute_expiry_despite_activity(settings: Settings, make_user) -> None:
    user = await make_user()
    service = await _short_lived(settings, idle=3600, absolute=3)
    try:
        token, created = await _key_token(service, user.user_id)
        started = time.monotonic()
        for _ in range(3):
            await service.auth.principal_for_token(token, CLIENT_IP)
            await asyncio.sleep(0.7)
        await asyncio.sleep(max(0.0, 3.2 - (time.monotonic() - started)))
        with pytest.raises(NotAuthorized):
            await service.auth.principal_for_token(token, CLIENT_IP)
        # Signing in again gives a new, working session.
        fresh = await service.auth.authenticate_key(key_credentials(created), CLIENT_IP)  # type: ignore[arg-type]
        await service.auth.principal_for_token(fresh.token, CLIENT_IP)
    finally:
        await service.close()


async def test_logout_ends_only_that_session(kg: Keygate, make_user, make_key, key_session) -> None:
    user = await make_user()
    created = await make_key(user.user_id)
    first, second = await key_session(created), await key_session(created)
    principal = await kg.auth.principal_for_token(first, CLIENT_IP)
    await kg.auth.logout(principal, CLIENT_IP)
    with pytest.raises(NotAuthorized):
        await kg.auth.principal_for_token(first, CLIENT_IP)
    await kg.auth.principal_for_token(second, CLIENT_IP)


async def test_unknown_or_malformed_tokens(kg: Keygate) -> None:
    for token in ("00000000-0000-0000-0000-000000000000", "", "x" * 5000, "\x00", "é"):
        with pytest.raises(NotAuthorized):
            await kg.auth.principal_for_token(token, CLIENT_IP)
