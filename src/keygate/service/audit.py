"""The audit trail: every authentication, key change, user change, lockout and unlock.

Events are buffered and written in batches by the background flusher (and on shutdown), so that a
successful authentication does not wait on an extra database write. Secrets and tokens never enter
an event: callers pass the API key (a public identifier) and never a secret or a session token.
"""

from __future__ import annotations

from keygate.service.clock import utcnow
from keygate.store.repositories import AuditEvent, AuditRepository

MAX_BUFFER = 10_000


class AuditLog:
    def __init__(self, repo: AuditRepository) -> None:
        self._repo = repo
        self._buffer: list[AuditEvent] = []

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
        self._buffer.append(
            AuditEvent(
                at=utcnow(),
                action=action,
                outcome=outcome,
                reason=reason,
                actor_user_id=actor_user_id,
                subject_user_id=subject_user_id,
                api_key=api_key,
                client_ip=client_ip,
                detail=detail,
            )
        )

    @property
    def pending(self) -> int:
        return len(self._buffer)

    async def flush(self) -> None:
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
