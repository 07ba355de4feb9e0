"""Readiness: whether this node can authenticate right now, for a load balancer to decide.

Liveness (the process answers) needs nothing; readiness asks each part authentication depends on:
the database, and Redis where it is configured (a command answered, and the invalidation channel
subscribed, without which this node refuses to authenticate). Each part gets ``timeout`` seconds,
all at once, so a check never takes much longer than that, whatever is broken.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from keygate.domain.errors import ServiceUnavailable
from keygate.service.container import Keygate
from keygate.store.database import ping as ping_database
from keygate.store.redis_state import RedisState

READY_TIMEOUT_SECONDS = 0.5
OK = "ok"


@dataclass(frozen=True)
class Readiness:
    checks: dict[str, str]  # part -> "ok", or why it failed (never a URL, a host or a secret)

    @property
    def ready(self) -> bool:
        return all(v == OK for v in self.checks.values())

    @property
    def failed(self) -> list[str]:
        return [part for part, v in self.checks.items() if v != OK]


_LINGERING: set[asyncio.Task[object]] = set()


def _forget(task: asyncio.Task[object]) -> None:
    _LINGERING.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved, so that asyncio does not report it as lost


async def _check(probe: Callable[[], Awaitable[object]], timeout: float) -> str:
    # Not ``wait_for``: it waits for the cancelled probe to finish, and a connection stuck on a silent
    # network finishes only at its own timeout. The probe is cancelled and left to end by itself.
    task: asyncio.Task[object] = asyncio.ensure_future(probe())
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        _LINGERING.add(task)
        task.add_done_callback(_forget)
        task.cancel()
        return f"did not answer within {timeout:g} s"
    try:
        task.result()
    except ServiceUnavailable as exc:
        cause = exc.__cause__
        return f"unreachable ({type(cause).__name__})" if cause is not None else "unreachable"
    except Exception as exc:  # a readiness check reports every failure; it never raises
        return f"failed ({type(exc).__name__})"
    return OK


async def readiness(kg: Keygate, timeout: float = READY_TIMEOUT_SECONDS) -> Readiness:
    probes: dict[str, Callable[[], Awaitable[object]]] = {"database": lambda: ping_database(kg.engine)}
    if kg.settings.redis_url:
        state = kg.state

        async def redis() -> None:
            if isinstance(state, RedisState):
                await state.ping()
            kg.coherence.require_healthy()

        probes["redis"] = redis
    results = await asyncio.gather(*(_check(probe, timeout) for probe in probes.values()))
    return Readiness(dict(zip(probes, results)))
