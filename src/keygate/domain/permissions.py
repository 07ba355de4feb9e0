"""The permissions a key can carry. A key with none of them can still read."""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum

from keygate.domain.errors import InvalidRequest


class Permission(str, Enum):
    TRADING = "Trading"
    WITHDRAW = "Withdraw"
    DEPOSIT = "Deposit"

    def __str__(self) -> str:
        return self.value


ALL_PERMISSIONS: frozenset[Permission] = frozenset(Permission)
_BY_LOWER = {p.value.lower(): p for p in Permission}


def parse_permissions(values: Iterable[object] | str | None) -> frozenset[Permission]:
    """Read permission names without regard to case; refuse an unknown one by name."""
    if values is None:
        return frozenset()
    if isinstance(values, str):
        values = [v for v in values.replace(";", ",").split(",")]
    if not isinstance(values, (list, tuple, set, frozenset)):  # a JSON object is not a list of names
        raise InvalidRequest("Permissions must be a list of names")
    result: set[Permission] = set()
    for value in values:
        if not isinstance(value, str):
            raise InvalidRequest(f"Unknown permission {value!r}; use Trading, Withdraw or Deposit")
        name = value.strip()
        if not name:
            continue
        try:
            result.add(_BY_LOWER[name.lower()])
        except KeyError:
            raise InvalidRequest(
                f"Unknown permission {name[:40]!r}; use Trading, Withdraw or Deposit"
            ) from None
    return frozenset(result)


def format_permissions(perms: Iterable[Permission]) -> list[str]:
    """A stable order for display and storage."""
    order = list(Permission)
    return [p.value for p in sorted(perms, key=order.index)]
