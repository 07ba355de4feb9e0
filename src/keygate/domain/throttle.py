"""Throttling and lockout policy: how many failures are tolerated, and for how long to back off.

Failures are counted per client IP, per API key and per user, each in its own window. Past a scope's
threshold every further failure doubles the back-off, up to a cap; the reply is 429 with
``Retry-After``. Separately, a user whose consecutive failures reach ``lockout_failures`` (at most 100,
as NIST SP 800-63B requires) is locked until an administrator unlocks them or ``lockout_seconds`` pass.
"""

from __future__ import annotations

from dataclasses import dataclass

NIST_MAX_CONSECUTIVE_FAILURES = 100


@dataclass(frozen=True)
class ThrottlePolicy:
    ip_failures: int = 20
    key_failures: int = 10
    user_failures: int = 10
    window_seconds: int = 900
    base_backoff_seconds: float = 1.0
    max_backoff_seconds: float = 900.0
    lockout_failures: int = 50
    lockout_seconds: int = 3600  # 0: only an administrator unlocks

    def __post_init__(self) -> None:
        if not 1 <= self.lockout_failures <= NIST_MAX_CONSECUTIVE_FAILURES:
            raise ValueError(f"lockout_failures must be between 1 and {NIST_MAX_CONSECUTIVE_FAILURES}")
        for name in ("ip_failures", "key_failures", "user_failures", "window_seconds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")

    def threshold(self, scope: str) -> int:
        kind = scope.split(":", 1)[0]
        return {"ip": self.ip_failures, "key": self.key_failures, "user": self.user_failures}[kind]

    def backoff(self, scope: str, failures: int) -> float:
        """Seconds to refuse this scope after its ``failures``-th failure (0 up to the threshold)."""
        excess = failures - self.threshold(scope) - 1
        if excess < 0:
            return 0.0
        return min(self.base_backoff_seconds * (2 ** min(excess, 32)), self.max_backoff_seconds)


def ip_scope(ip: str | None) -> str | None:
    return f"ip:{ip}" if ip else None


def key_scope(api_key: str) -> str:
    return f"key:{api_key}"


def user_scope(user_id: int) -> str:
    return f"user:{user_id}"


def consecutive_scope(user_id: int) -> str:
    """Consecutive failures of one user, which lead to a lockout."""
    return f"consecutive:{user_id}"
