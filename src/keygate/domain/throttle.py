"""Throttling and lockout policy: who is counted, how many failures are tolerated, how long to back off.

The design follows NIST SP 800-63B-4 (rate limiting that does not hand an attacker a denial of service)
and OWASP's device-cookie approach:

* A wrong API signature is not a guess that can succeed (the secret has 256 bits), so it never counts
  against a user or a key: it counts against the **source network** only (``sig:`` scope), to bound
  what a noisy client costs us.
* Password (and TOTP code) failures count against the **source network** (``pw:``) and the **username**
  as typed, lower-cased (``name:``), whether or not such a user exists, so throttling tells nothing
  about which names exist. Past ``user_failures`` the name backs off, doubling from 1 s; at
  ``lockout_failures`` it is locked for ``lockout_seconds``. Both apply to *untrusted* sources only.
* A **trusted source** of a user (a valid device cookie, or an address the user signed in from
  before) is not blocked by those counters: it has its own (``src:``), with the same thresholds. So
  guesses made elsewhere never keep the owner out.

Sources are compared by network: an IPv4 address, or the /64 of an IPv6 address (a single host
usually holds a whole /64, so rotating within it buys an attacker nothing).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache

NIST_MAX_CONSECUTIVE_FAILURES = 100

PROFILE_NIST = "nist"
PROFILE_PCI = "pci-dss-4.0.1"
PROFILES = (PROFILE_NIST, PROFILE_PCI)
PCI_MAX_FAILURES = 10  # PCI DSS 4.0.1 requirement 8.3.4: lock after not more than 10 attempts
PCI_MIN_LOCKOUT_SECONDS = 1800  # ... for at least 30 minutes (or until an administrator unlocks)


@dataclass(frozen=True)
class ThrottlePolicy:
    ip_failures: int = 20
    key_failures: int = 10  # kept for the setting's sake; wrong signatures no longer count per key
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

    @classmethod
    def for_profile(cls, profile: str, **values: object) -> "ThrottlePolicy":
        """The policy of ``profile``: ``nist`` takes ``values`` as they are; ``pci-dss-4.0.1`` clamps
        the lockout to at most 10 failures and at least 30 minutes (0, "until an administrator
        unlocks", also satisfies 8.3.4)."""
        if profile not in PROFILES:
            raise ValueError(f"throttle profile must be one of {', '.join(PROFILES)}")
        policy = cls(**values)  # type: ignore[arg-type]
        if profile == PROFILE_PCI:
            seconds = policy.lockout_seconds
            policy = cls(**{**values, "lockout_failures": min(policy.lockout_failures, PCI_MAX_FAILURES),  # type: ignore[arg-type]
                            "user_failures": min(policy.user_failures, PCI_MAX_FAILURES),
                            "lockout_seconds": seconds if seconds == 0 else max(seconds, PCI_MIN_LOCKOUT_SECONDS)})
        return policy

    def threshold(self, scope: str) -> int:
        kind = scope.split(":", 1)[0]
        return {"sig": self.ip_failures, "pw": self.ip_failures, "name": self.user_failures, "src": self.user_failures}[kind]

    def backoff(self, scope: str, failures: int) -> float:
        """Seconds to refuse this scope after its ``failures``-th failure (0 up to the threshold)."""
        excess = failures - self.threshold(scope) - 1
        if excess < 0:
            return 0.0
        return float(min(self.base_backoff_seconds * 2.0 ** min(excess, 32), self.max_backoff_seconds))

    def locks(self, scope: str, failures: int) -> bool:
        """Whether this failure locks the scope (names and trusted sources, not networks)."""
        return scope.split(":", 1)[0] in ("name", "src") and failures >= self.lockout_failures


@lru_cache(maxsize=4096)  # a pure function of the text, asked at every sign-in (parsing costs a few us)
def network_of(ip: str | None) -> str | None:
    """The unit an address is counted in: the address itself (IPv4), or its /64 (IPv6)."""
    if not ip:
        return None
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip[:64]
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(addr) >> 64 << 64, 64)))
    return str(addr)


def name_key(username: str) -> str:
    """A username as counters and trust marks know it: lower-case (usernames ignore case)."""
    return username.strip().lower()[:64]


def signature_scope(ip: str | None) -> str | None:
    net = network_of(ip)
    return f"sig:{net}" if net else None


def password_ip_scope(ip: str | None) -> str | None:
    net = network_of(ip)
    return f"pw:{net}" if net else None


def name_scope(username: str) -> str:
    return f"name:{name_key(username)}"


def source_scope(username: str, source: str) -> str:
    """Failures of one trusted source (``d:<device id>`` or ``a:<network>``) of one username."""
    return f"src:{name_key(username)}:{source}"


def known_address_mark(username: str, ip: str | None) -> str | None:
    net = network_of(ip)
    return f"known:{name_key(username)}:{net}" if net else None
