"""IP allowlists: IPv4 and IPv6 addresses and CIDR ranges. An empty list allows any address."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from keygate.domain.errors import InvalidRequest

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_ENTRIES = 100
_SPLIT = re.compile(r"[\s,;]+")


def _parse_entry(entry: str) -> IpNetwork:
    try:
        net = ipaddress.ip_network(entry, strict=False)
    except ValueError:
        shown = entry if len(entry) <= 60 else entry[:60] + "..."
        raise InvalidRequest(
            f"Invalid IP allowlist entry {shown!r}: expected an IPv4 or IPv6 address or a CIDR range"
        ) from None
    # An IPv4-mapped entry (``::ffff:1.2.3.4``) means the IPv4 client, which is how clients are read.
    mapped = net.network_address.ipv4_mapped if isinstance(net, ipaddress.IPv6Network) else None
    if mapped is not None and net.prefixlen >= 96:
        return ipaddress.IPv4Network((mapped, net.prefixlen - 96))
    return net


@lru_cache(maxsize=4096)
def parse_address(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Parse a client address; IPv4-mapped IPv6 (``::ffff:1.2.3.4``) is read as IPv4."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@lru_cache(maxsize=4096)
def canonical_address(address: str) -> str | None:
    """The one spelling of a client address that reaches the service, or None for anything else.

    IPv4 dotted quad, or IPv6 compressed and lower-case (at most 39 characters); an IPv4-mapped IPv6
    address is its IPv4 address. An IPv6 zone (``fe80::1%eth0``) names an interface of this host,
    not the client, and is dropped; text after ``%`` on an IPv4 address, or anything that is not an
    address, gives None.
    """
    if len(address) > 64:
        return None
    text, sep, zone = address.partition("%")
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if sep and (ip.version != 6 or not zone):
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


@dataclass(frozen=True)
class IpAllowlist:
    networks: tuple[IpNetwork, ...] = ()

    @classmethod
    def parse(cls, entries: str | Iterable[object] | None) -> "IpAllowlist":
        """Accept one string (entries split by commas, semicolons, spaces or new lines) or a list."""
        if entries is None:
            return cls()
        if isinstance(entries, str):
            items = [e for e in _SPLIT.split(entries) if e]
        elif not isinstance(entries, (list, tuple, set, frozenset)):
            raise InvalidRequest("IP allowlist must be a list of addresses or one string of them")
        else:
            items = []
            for e in entries:
                if not isinstance(e, str):
                    raise InvalidRequest(f"Invalid IP allowlist entry {e!r}: expected a string")
                items.extend(x for x in _SPLIT.split(e) if x)
        if len(items) > MAX_ENTRIES:
            raise InvalidRequest(f"An IP allowlist holds at most {MAX_ENTRIES} entries")
        nets: list[IpNetwork] = []
        for item in items:
            net = _parse_entry(item)
            if net not in nets:
                nets.append(net)
        return cls(tuple(nets))

    @property
    def allows_any(self) -> bool:
        return not self.networks

    def allows(self, address: str | None) -> bool:
        if not self.networks:
            return True
        if address is None:
            return False
        ip = parse_address(address)
        if ip is None:
            return False
        return any(ip.version == n.version and ip in n for n in self.networks)

    def as_strings(self) -> list[str]:
        """Single addresses show without their /32 or /128."""
        out = []
        for n in self.networks:
            full = n.max_prefixlen == n.prefixlen
            out.append(str(n.network_address) if full else str(n))
        return out

    def serialize(self) -> str:
        return ",".join(self.as_strings())
