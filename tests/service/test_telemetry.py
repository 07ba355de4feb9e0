"""The counters behind /metrics: bounded audit reasons, named caches, database and Redis errors."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from keygate.api import create_app
from keygate.domain.errors import DatabaseUnavailable, ServiceUnavailable
from keygate.service import Keygate
from keygate.service.audit import AuditLog
from keygate.service.cache import TTLCache
from keygate.store.database import create_engine
from keygate.store.redis_state import RedisState
from keygate.telemetry import KNOWN_REASONS, normalise_reason, sync
from support import free_port

SRC = Path(__file__).resolve().parents[2] / "src" / "keygate"


def sample(name: str, **labels: str) -> float:
    sync()
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_every_reason_the_code_records_is_its_own_label() -> None:
    """A fixed reason in the code keeps its words; a new one that nobody listed would fold into "other"."""
    source = "\n".join(p.read_text() for p in SRC.rglob("*.py"))
    literals = set()
    for pattern in (r'reason="([^"{]+)"', r'AuthenticationFailed\("([^"{]+)"', r'refuse_(?:guess|holder)\(action, "([^"{]+)"',
                    r'reason = "([^"{]+)" if', r'reason = "[^"{]+" if .* else "([^"{]+)"'):
        literals |= set(re.findall(pattern, source))
    assert {"signature mismatch", "wrong password", "nonce reused (replay?)"} <= literals
    unlisted = {r for r in literals if normalise_reason(r) != r}
    assert not unlisted, f"add these to telemetry.KNOWN_REASONS: {sorted(unlisted)}"


@pytest.mark.parametrize("raw, label", [
    ("client ip 203.0.113.7 not in allowlist", "client ip not in allowlist"),
    ("client ip 2001:db8::1%eth0 not in allowlist", "client ip not in allowlist"),
    ("client ip None not in allowlist", "client ip not in allowlist"),
    ("50 consecutive failed authentications", "consecutive failed authentications"),
    ("something new with a value 12345", "other"),
    (None, ""),
])
def test_reasons_that_carry_values_are_folded(raw: str | None, label: str) -> None:
    assert normalise_reason(raw) == label


def test_audit_counts_by_action_outcome_and_bounded_reason() -> None:
    audit = AuditLog(repo=None)  # type: ignore[arg-type]  (nothing is flushed here)
    before = sample("keygate_audit_events_total", action="auth.key", outcome="failure", reason="client ip not in allowlist")
    for i in range(50):
        audit.record("auth.key", "failure", reason=f"client ip 198.51.100.{i} not in allowlist")
    audit.tally("auth.signed_request", subject_user_id=1, api_key="k", client_ip="198.51.100.1")
    after = sample("keygate_audit_events_total", action="auth.key", outcome="failure", reason="client ip not in allowlist")
    assert after - before == 50
    labels = {s.labels["reason"] for m in REGISTRY.collect() if m.name == "keygate_audit_events" for s in m.samples}
    assert not any("198.51.100" in r for r in labels)
    assert labels <= KNOWN_REASONS | {"client ip not in allowlist", "consecutive failed authentications", "other"}


def test_a_named_cache_counts_hits_and_misses() -> None:
    cache: TTLCache[str, int] = TTLCache(60, name="test_cache")
    cache.get("a")
    cache.put("a", 1)
    cache.get("a")
    cache.get("a")
    assert sample("keygate_cache_lookups_total", cache="test_cache", result="miss") == 1
    assert sample("keygate_cache_lookups_total", cache="test_cache", result="hit") == 2


async def test_database_errors_are_counted() -> None:
    engine = create_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nothing")
    before = sample("keygate_database_errors_total", error="connection")
    with pytest.raises((OSError, DatabaseUnavailable)):  # the refusal the service answers 503 for
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    await engine.dispose()
    assert sample("keygate_database_errors_total", error="connection") == before + 1


async def test_a_failing_sql_statement_is_counted(kg: Keygate) -> None:
    before = sample("keygate_database_errors_total", error="ProgrammingError") + sample("keygate_database_errors_total", error="OperationalError")
    with pytest.raises(DBAPIError):
        async with kg.engine.connect() as conn:
            await conn.execute(text("SELECT * FROM no_such_table"))
    after = sample("keygate_database_errors_total", error="ProgrammingError") + sample("keygate_database_errors_total", error="OperationalError")
    assert after == before + 1


async def test_redis_errors_are_counted() -> None:
    state = RedisState(f"redis://127.0.0.1:{free_port()}/0")
    before = sample("keygate_redis_errors_total", component="state")
    with pytest.raises(ServiceUnavailable):
        await state.ping()
    await state.close()
    assert sample("keygate_redis_errors_total", component="state") == before + 1


async def test_metrics_can_be_switched_off(kg: Keygate) -> None:

    for enabled, status in ((True, 200), (False, 404)):
        app = create_app(kg.settings.model_copy(update={"metrics": enabled}), keygate=kg)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            r = await client.get("/metrics")
        assert r.status_code == status
        if not enabled:
            assert r.json()["errorcode"] == 104  # the same APEX-shaped 404 as any unknown path
        else:
            assert "keygate_requests_total" in r.text and r.headers["cache-control"] == "no-store"
