"""Issue 10, item 3: a client address of 92 characters (``203.0.113.7%`` and more) from a trusted proxy
once overflowed the 64-character audit column on PostgreSQL and stopped the audit trail.

Through a real server (on SQLite and on PostgreSQL) trusting 127.0.0.1, where this test connects from:
headers whose entries are not plain addresses (a zone suffix, garbage, an overlong value) are not
believed, the address that reaches the service is canonical, and the audit trail keeps being written.
"""

from __future__ import annotations

import ipaddress

import httpx
from proxy_support import audited_addresses, signed

from support import Server

LONG = "203.0.113.7%" + "a" * 80

HEADERS = [
    {"X-Forwarded-For": LONG},
    {"X-Forwarded-For": f"198.51.100.1, {LONG}"},
    {"X-Forwarded-For": "fe80::1%eth0"},
    {"X-Forwarded-For": "x" * 300},
    {"Forwarded": f'for="{LONG}"'},
    {"Forwarded": 'for="[fe80::1%25eth0]:80"'},
    {"Forwarded": "for=" + "y" * 300},
]


async def test_no_long_or_odd_address_reaches_the_audit_trail(keygate_behind_proxies: Server, kg, make_user, make_key) -> None:  # type: ignore[no-untyped-def]
    base = keygate_behind_proxies.base_url
    admin = await make_user(admin=True)
    created = await make_key(admin.user_id, ["Trading"])
    with httpx.Client(base_url=base) as client:
        for headers in HEADERS:
            reply = client.post("/AP/AuthenticateUser", headers={**signed(created), **headers})
            assert reply.status_code == 200, (headers, reply.text)
        # Canonical forms of addresses a proxy may write.
        assert client.post("/AP/AuthenticateUser", headers={**signed(created), "X-Forwarded-For": "2001:DB8:0:0::7"}).status_code == 200
        assert client.post("/AP/AuthenticateUser", headers={**signed(created), "X-Forwarded-For": "::ffff:198.51.100.8"}).status_code == 200
        # Then the trail keeps being written, and can be read.
        for _ in range(21):
            assert client.post("/AP/AuthenticateUser", headers=signed(created)).status_code == 200
        addresses = await audited_addresses(kg, created, len(HEADERS) + 2 + 21)
        assert set(addresses) == {"127.0.0.1", "2001:db8::7", "198.51.100.8"}, addresses
        assert all(a is not None and str(ipaddress.ip_address(a)) == a and len(a) <= 39 for a in addresses)
        token = client.post("/AP/AuthenticateUser", json={"UserName": admin.username, "Password": admin.password}).json()["SessionToken"]
        log = client.post("/AP/GetAuditLog", headers={"aptoken": token}, json={"APIKey": created.key.api_key, "Limit": 1000})
        assert log.status_code == 200, log.text
        assert len([e for e in log.json() if e["Action"] == "auth.key"]) == len(HEADERS) + 2 + 21
    assert "Traceback" not in keygate_behind_proxies.log()
