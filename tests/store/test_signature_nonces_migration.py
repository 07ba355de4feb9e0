"""Migration 0013 moves the Signature v2 nonces already claimed into ``signature_nonces``: one
claimed just before the upgrade is refused after it, and ``used_nonces`` keeps only APEX nonces."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from keygate.store.database import _alembic_config, create_engine, migrate
from keygate.store.shared_state import SqlState
from keygate.store.tables import signature_nonces, used_nonces


def _upgrade_to(connection: Connection, revision: str) -> None:
    from alembic import command

    command.upgrade(_alembic_config(connection), revision)


async def test_v2_nonces_claimed_before_the_upgrade_stay_claimed(empty_database_url: str) -> None:
    engine = create_engine(empty_database_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_upgrade_to, "0012")
        later = datetime.now(timezone.utc) + timedelta(seconds=8)
        async with engine.begin() as conn:
            await conn.execute(used_nonces.insert(), [
                {"api_key": "k1", "nonce": "v2:captured", "expires_at": later},
                {"api_key": "k1", "nonce": "1733000000000", "expires_at": later + timedelta(days=36500)},
            ])
        await migrate(engine)
        async with engine.connect() as conn:
            left = [r[0] for r in await conn.execute(select(used_nonces.c.nonce))]
            moved = (await conn.execute(select(func.count()).select_from(signature_nonces))).scalar_one()
        assert left == ["1733000000000"] and moved == 1
        state = SqlState(engine)
        try:
            assert not await state.claim_signature_nonce("k1", "v2:captured", 8)  # a replay after the upgrade
            assert await state.claim_signature_nonce("k1", "v2:fresh", 8)
        finally:
            await state.close()
    finally:
        await engine.dispose()
