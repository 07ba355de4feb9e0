"""Fixtures for service tests: sign in with a key or a password."""

from __future__ import annotations

import pytest
from svc_helpers import CLIENT_IP, key_credentials

from keygate.service import Keygate, Principal
from keygate.service.keys import CreatedKey


@pytest.fixture
def key_session(kg: Keygate):  # type: ignore[no-untyped-def]
    """Authenticate with a key; return the session token."""

    async def sign_in(created: CreatedKey, ip: str = CLIENT_IP) -> str:
        return (await kg.auth.authenticate_key(key_credentials(created), ip)).token

    return sign_in


@pytest.fixture
def password_principal(kg: Keygate):  # type: ignore[no-untyped-def]
    """Sign in with username and password; return the principal of the new session."""

    async def sign_in(username: str, password: str) -> Principal:
        grant = await kg.auth.authenticate_password(username, password, CLIENT_IP)
        return await kg.auth.principal_for_token(grant.token, CLIENT_IP)  # type: ignore[union-attr]

    return sign_in
