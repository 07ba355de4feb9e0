"""No audit record can stop the writer: fields are bounded before they are queued, and a row the
database refuses is dropped alone, with the rest of its batch written."""

from __future__ import annotations

import secrets

from keygate.service import Keygate
from keygate.service.principal import OPERATOR


async def test_oversized_and_odd_fields_are_bounded_and_written(kg: Keygate) -> None:
    marker = f"bounded-{secrets.token_hex(4)}"
    kg.audit.record("auth.key", "failure", reason="r" * 500, api_key="k" * 100, client_ip="203.0.113.7%" + "x" * 80,
                    detail=marker + "d" * 5000)
    kg.audit.record("auth.key", "failure", reason=marker, client_ip="::ffff:192.0.2.1")
    await kg.audit.flush()
    events = [e for e in await kg.audit.query(OPERATOR, action="auth.key", limit=50) if marker in (e.detail or "") + (e.reason or "")]
    assert len(events) == 2
    odd = next(e for e in events if e.detail and e.detail.startswith(marker))
    assert len(odd.reason or "") <= 200 and len(odd.api_key or "") <= 64 and len(odd.detail or "") <= 2000
    assert odd.client_ip == "invalid", "an address that is no address is never stored as given"
    assert next(e for e in events if e.reason == marker).client_ip == "192.0.2.1"


async def test_a_row_the_database_refuses_does_not_hold_back_its_batch(kg: Keygate) -> None:
    marker = f"batch-{secrets.token_hex(4)}"
    kg.audit.record("auth.key", "failure", reason=marker + "-before")
    kg.audit.record("auth.key", "failure", reason=marker + "-refused", subject_user_id=2**40)  # overflows INTEGER on PostgreSQL
    kg.audit.record("auth.key", "failure", reason=marker + "-after")
    await kg.audit.flush()
    kg.audit.record("auth.key", "failure", reason=marker + "-later")
    await kg.audit.flush()
    reasons = {e.reason for e in await kg.audit.query(OPERATOR, action="auth.key", limit=100)}
    assert {marker + "-before", marker + "-after", marker + "-later"} <= reasons
    assert kg.audit.pending == 0, "nothing is left behind to block later flushes"
