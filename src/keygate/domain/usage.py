"""A key's usage: requests and refusals counted per UTC hour (pure; no I/O).

Hours are numbers on the hot path (``unix_time // 3600``), so counting a request costs one division
and a dictionary increment; they become datetimes only when written or shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

MAX_HOURS = 7 * 24  # what the console and GetUserAPIKeyUsage show: the last 7 days, hour by hour
KEEP_DAYS = 8  # rows older than this are purged (a day more than anyone is shown)


def hour_start(number: int) -> datetime:
    return datetime.fromtimestamp(number * 3600, timezone.utc)


def hour_of(at: datetime) -> datetime:
    return at.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)


@dataclass(frozen=True)
class HourCount:
    hour: datetime  # the hour's start, UTC
    requests: int = 0
    refusals: int = 0

    def as_dict(self) -> dict[str, object]:
        return {"Hour": self.hour.isoformat(), "Requests": self.requests, "Refusals": self.refusals}


@dataclass(frozen=True)
class KeyUsage:
    """What a user may see of one key's use: its last use and every hour of the window, oldest first
    (hours without a request are there too, with zeros)."""

    api_key: str
    user_id: int
    last_used_at: datetime | None
    last_used_ip: str | None
    hours: tuple[HourCount, ...]

    def last(self, count: int) -> tuple[HourCount, ...]:
        return self.hours[-count:]

    @property
    def requests(self) -> int:
        return sum(h.requests for h in self.hours)

    @property
    def refusals(self) -> int:
        return sum(h.refusals for h in self.hours)

    def as_dict(self) -> dict[str, object]:
        return {
            "APIKey": self.api_key,
            "UserId": self.user_id,
            "LastUsedAt": self.last_used_at.isoformat() if self.last_used_at else None,
            "LastUsedIp": self.last_used_ip,
            "Requests": self.requests,
            "Refusals": self.refusals,
            "Hours": [h.as_dict() for h in self.hours],
        }


def fill_hours(counts: dict[datetime, tuple[int, int]], now: datetime, hours: int) -> tuple[HourCount, ...]:
    """Every hour of the ``hours`` ending with ``now``'s hour, oldest first, from the stored ``counts``
    (hour start -> (requests, refusals))."""
    last = hour_of(now)
    out = []
    for back in range(hours - 1, -1, -1):
        hour = last - timedelta(hours=back)
        requests, refusals = counts.get(hour, (0, 0))
        out.append(HourCount(hour, requests, refusals))
    return tuple(out)
