"""The audit trail: every authentication, key change, user change, lockout and unlock.

Two paths, by what a crash may cost:

- Changes (keys, users, sessions ended by someone) are written **in the change's own transaction**
  (``store.unit``): a change is never without its record, even after kill -9.
- Authentication events are buffered and written in batches every ``FLUSH_SECONDS`` (0.1 s) by the
  background flusher (and on shutdown), so that a successful authentication does not wait on a
  database write. A crash loses at most the last 0.1 s of them.

Secrets and tokens never enter an event: callers pass the API key (a public identifier) and never a
secret or a session token. Every field is bounded (and the client address canonical) before an event
is queued, so no value can overflow a column; a batch the database refuses is written row by row, and
a row refused alone is logged and dropped, so no record can stop the writer.

Successful per-request signed calls are the one high-volume case: they are tallied, and each flush
writes one row per (action, user, key, client IP) with the count and the first and last time, so
every authentication is accounted for without a row per API call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone
from functools import lru_cache

from keygate.domain.iprules import parse_address
from keygate.service.clock import utcnow
from keygate.service.principal import Principal
from keygate.store.repositories import AuditEvent, AuditRepository
from keygate.telemetry import count_audit

MAX_BUFFER = 10_000
FLUSH_SECONDS = 0.1
_LIMITS = {"action": 48, "outcome": 16, "reason": 200, "api_key": 64, "detail": 2000}
log = logging.getLogger("keygate.audit")


def _clip(value: str | None, limit: int) -> str | None:
    if value is None:
        return None
    return value if len(value) <= limit else value[: limit - 1] + "\u2026"


@lru_cache(maxsize=4096)  # every audit event names its address: parsing one costs about 3 us
def _address(ip: str | None) -> str | None:
    """The canonical form of a client address, or a marker: never a string that could overflow."""
    if ip is None:
        return None
    parsed = parse_address(ip) if len(ip) <= 64 else None
    return str(parsed) if parsed is not None else "invalid"


def event(action: str, outcome: str = "success", *, reason: str | None = None, actor: Principal | None = None,
          actor_user_id: int | None = None, subject_user_id: int | None = None, api_key: str | None = None,
          client_ip: str | None = None, detail: str | None = None, actor_kind: str | None = None,
          counted: bool = False) -> AuditEvent:
    """One audit row, every field bounded to its column, and counted in the metrics by bounded reason
    (``counted``: already counted, as a tallied signed call is at each call)."""
    if not counted:
        count_audit(action, outcome, reason)
    if actor is not None:
        actor_user_id, actor_kind = actor.audit_actor
    return AuditEvent(utcnow(), _clip(action, 48) or "", _clip(outcome, 16) or "", _clip(reason, 200), actor_user_id,
                      actor_kind, subject_user_id, _clip(api_key, 64), _address(client_ip), _clip(detail, 2000))


class AuditLog:
    def __init__(self, repo: AuditRepository) -> None:
        self._repo = repo
        self._buffer: list[AuditEvent] = []
        self._tallies: dict[tuple[str, int, str | None, str | None], list[float]] = {}
        # One flush at a time: a query waits for a batch another task is still writing.
        self._flushing = asyncio.Lock()

    def record(
        self,
        action: str,
        outcome: str = "success",
        *,
        reason: str | None = None,
        actor_user_id: int | None = None,
        subject_user_id: int | None = None,
        api_key: str | None = None,
        client_ip: str | None = None,
        detail: str | None = None,
    ) -> None:
        """Queue an authentication event (written within ``FLUSH_SECONDS``)."""
        if len(self._buffer) >= MAX_BUFFER:
            self._buffer.pop(0)  # the database has been failing for a long time: keep the newest
        self._buffer.append(event(action, outcome, reason=reason, actor_user_id=actor_user_id,
                                  subject_user_id=subject_user_id, api_key=api_key, client_ip=client_ip, detail=detail))

    def tally(self, action: str, *, subject_user_id: int, api_key: str | None, client_ip: str | None) -> None:
        """Count one success of a high-volume kind; written as one row per flush (see the module doc)."""
        count_audit(action, "success", None)
        now = time.time()
        entry = self._tallies.get((action, subject_user_id, api_key, client_ip))
        if entry is None:
            self._tallies[(action, subject_user_id, api_key, client_ip)] = [now, now, 1.0]
        else:
            entry[1] = now
            entry[2] += 1

    def _drain_tallies(self) -> None:
        tallies, self._tallies = self._tallies, {}
        for (action, user_id, api_key, client_ip), (first, last, count) in tallies.items():
            last_at = datetime.fromtimestamp(last, timezone.utc).isoformat()
            self._buffer.append(event(action, subject_user_id=user_id, api_key=api_key, client_ip=client_ip,
                                      detail=f"count={int(count)}; last={last_at}", counted=True)._replace(at=datetime.fromtimestamp(first, timezone.utc)))

    @property
    def pending(self) -> int:
        return len(self._buffer) + len(self._tallies)

    async def flush(self) -> None:
        async with self._flushing:
            self._drain_tallies()
            if not self._buffer:
                return
            batch, self._buffer = self._buffer, []
            try:
                await self._repo.append_many(batch)
                return
            except Exception as exc:
                failure = exc
            # The batch failed: one row at a time, so that one bad row cannot hold the others back.
            kept: list[AuditEvent] = []
            for item in batch:
                try:
                    await self._repo.append_many([item])
                except Exception:
                    kept.append(item)
            if len(kept) == len(batch):
                # Nothing could be written: the database is unreachable. Keep them for the next flush.
                self._buffer = (kept + self._buffer)[-MAX_BUFFER:]
                raise failure
            for item in kept:
                log.error("dropped an audit event the database refused: action=%s outcome=%s (%s)",
                          item.action, item.outcome, type(failure).__name__)

    async def query(self, actor: Principal, **filters: object) -> list[AuditEvent]:
        """The trail, newest first: administrators (and the operator) only."""
        actor.require_admin()
        await self.flush()
        return await self._repo.query(**filters)  # type: ignore[arg-type]
