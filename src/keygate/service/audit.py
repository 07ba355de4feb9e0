"""The audit trail: every authentication, key change, user change, lockout and unlock.

Events are buffered and written in batches by the background flusher (and on shutdown), so that a
successful authentication does not wait on an extra database write. Secrets and tokens never enter
an event: callers pass the API key (a public identifier) and never a secret or a session token.

Successful per-request signed calls are the one high-volume case: they are tallied, and each flush
writes one row per (action, user, key, client IP) with the count and the first and last time, so
every authentication is accounted for without a row per API call.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone

from keygate.service.clock import utcnow
from keygate.store.repositories import AuditEvent, AuditRepository
from keygate.telemetry import count_audit

MAX_BUFFER = 10_000


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
        count_audit(action, outcome, reason)  # the metrics' count of outcomes by (bounded) reason
        self._buffer.append(  # positional, in field order: the hot path records one per authentication
            AuditEvent(utcnow(), action, outcome, reason, actor_user_id, subject_user_id, api_key, client_ip, detail))

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
            self._buffer.append(AuditEvent(
                at=datetime.fromtimestamp(first, timezone.utc), action=action, outcome="success",
                subject_user_id=user_id, api_key=api_key, client_ip=client_ip,
                detail=f"count={int(count)}; last={last_at}",
            ))

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
            except Exception:
                # Keep the events for the next flush rather than lose them; bound the memory they hold.
                self._buffer = (batch + self._buffer)[-MAX_BUFFER:]
                raise

    async def query(self, **filters: object) -> list[AuditEvent]:
        await self.flush()
        return await self._repo.query(**filters)  # type: ignore[arg-type]
