"""Threat: IP spoofing and allowlist bypass.

An attacker holding a key and secret that are allow-listed for someone else's address tries to pass
as that address: by sending ``X-Forwarded-For`` (or similar) itself, by prepending a forged entry that
a real proxy then forwards, or by making a session from an allowed address and using it elsewhere.
The client IP is the socket peer unless that peer is a configured trusted proxy; only then is
``X-Forwarded-For`` read, right to left, skipping trusted hops. The allowlist is enforced on
``AuthenticateUser``, on each per-request signed call, and on every use of a key's session token.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import httpx
import pytest
from abuse_helpers import client_at
from abuse_helpers import fresh_signed as signed

from keygate.api import create_app
from keygate.config import Settings
from keygate.domain.iprules import IpAllowlist
from keygate.domain.permissions import parse_permissions
from keygate.service import Keygate
from keygate.service.keys import CreatedKey
from keygate.service.principal import OPERATOR

ALLOWED = "198.51.100.9"
ATTACKER = "203.0.113.7"
PROXY = "10.0.0.1"
REFUSED_BY_ALLOWLIST = "This API key may not be used from your IP address"


async def started(settings: Settings, **changes: object) -> Keygate:
    service = Keygate(settings.model_copy(update=changes))
    await service.start(bootstrap_admin=False)
    return service


@pytest.fixture(scope="module")
async def proxied(settings: Settings) -> AsyncIterator[Keygate]:
    """A service behind a proxy in 10.0.0.0/8, with sessions not bound to the address that made them,
    so that only the key's allowlist stands between a moved session and its use."""
    service = await started(settings, trusted_proxies=("10.0.0.0/8",), bind_session_ip=False)
    yield service
    await service.close()


@pytest.fixture(scope="module")
async def unbound(settings: Settings) -> AsyncIterator[Keygate]:
    service = await started(settings, bind_session_ip=False)
    yield service
    await service.close()


@pytest.fixture(scope="module")
async def owner_id(kg: Keygate) -> int:
    """One key owner for the module (a user costs a slow password hash; a key is cheap)."""
    return (await kg.users.create(OPERATOR, f"ipowner{secrets.token_hex(5)}", secrets.token_urlsafe(16))).user_id


async def new_key(service: Keygate, user_id: int, ips: list[str]) -> CreatedKey:
    owner = OPERATOR
    return await service.keys.create(owner, user_id, parse_permissions(["Trading"]), IpAllowlist.parse(ips))


async def sign_in(client: httpx.AsyncClient, created: CreatedKey, **headers: str) -> httpx.Response:
    return await client.post("/AP/AuthenticateUser", headers={**signed(created), **headers})


def refused_for_address(r: httpx.Response) -> bool:
    if r.status_code == 200:
        return False
    assert r.status_code == 401 and r.json()["errormsg"] == REFUSED_BY_ALLOWLIST, r.text
    return True


async def last_client_ip(service: Keygate, created: CreatedKey) -> str | None:
    return (await service.audit.query(OPERATOR, api_key=created.key.api_key, limit=1))[0].client_ip


async def test_forwarded_headers_ignored_without_trusted_proxies(kg: Keygate, make_user, make_key) -> None:
    created = await make_key((await make_user()).user_id, ["Trading"], [ALLOWED])
    app = create_app(keygate=kg)
    spoofs = [{"X-Forwarded-For": ALLOWED}, {"X-Forwarded-For": f"{ALLOWED}, {ALLOWED}"}, {"X-Real-IP": ALLOWED},
              {"Forwarded": f"for={ALLOWED}"}, {"True-Client-IP": ALLOWED}, {"CF-Connecting-IP": ALLOWED}]
    async with client_at(app, ATTACKER) as attacker:
        for spoof in spoofs:
            assert refused_for_address(await sign_in(attacker, created, **spoof)), spoof
            assert refused_for_address(await attacker.get("/AP/GetUserInfo", headers={**signed(created), **spoof})), spoof
            assert await last_client_ip(kg, created) == ATTACKER
    # Even a 10.x peer is just a peer when no proxy is trusted.
    async with client_at(app, PROXY) as internal:
        assert refused_for_address(await sign_in(internal, created, **{"X-Forwarded-For": ALLOWED}))
    async with client_at(app, ALLOWED) as owner:
        assert (await sign_in(owner, created, **{"X-Forwarded-For": ATTACKER})).status_code == 200


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        (PROXY, f"{ALLOWED}, 10.0.0.2", ALLOWED),  # client, then a second trusted hop
        (PROXY, ALLOWED, ALLOWED),
        (PROXY, f"{ALLOWED} ,10.20.30.40,10.0.0.2", ALLOWED),
        (PROXY, f"{ALLOWED}, {ATTACKER}", ATTACKER),  # forged leftmost entry, then the real (untrusted) client
        (PROXY, f"{ALLOWED}, {ATTACKER}, 10.0.0.2", ATTACKER),
        (PROXY, f"{ALLOWED}, not-an-ip", PROXY),  # a garbled chain is not believed
        (PROXY, "", PROXY),
        (ATTACKER, ALLOWED, ATTACKER),  # an untrusted peer's header is ignored
        (ATTACKER, f"{ALLOWED}, 10.0.0.2", ATTACKER),
    ],
)
async def test_forwarded_for_read_only_from_trusted_proxies(proxied: Keygate, owner_id: int, peer: str, forwarded: str, client: str) -> None:
    created = await new_key(proxied, owner_id, [ALLOWED])
    async with client_at(create_app(keygate=proxied), peer) as c:
        r = await sign_in(c, created, **({"X-Forwarded-For": forwarded} if forwarded else {}))
        assert refused_for_address(r) is (client != ALLOWED), r.text
        assert await last_client_ip(proxied, created) == client


async def test_session_made_through_proxy_follows_the_forwarded_client(proxied: Keygate, owner_id: int) -> None:
    created = await new_key(proxied, owner_id, [ALLOWED])
    async with client_at(create_app(keygate=proxied), PROXY) as via_proxy:
        r = await sign_in(via_proxy, created, **{"X-Forwarded-For": ALLOWED})
        assert r.status_code == 200, r.text
        token = r.json()["SessionToken"]
        ok = await via_proxy.get("/AP/GetUserInfo", headers={"aptoken": token, "X-Forwarded-For": ALLOWED})
        assert ok.status_code == 200
        moved = await via_proxy.get("/AP/GetUserInfo", headers={"aptoken": token, "X-Forwarded-For": f"{ALLOWED}, {ATTACKER}"})
        assert moved.status_code == 401 and moved.json()["errorcode"] == 20


ALLOWLISTS = [
    pytest.param(["198.51.100.9"], "198.51.100.9", "198.51.100.10", id="ipv4"),
    pytest.param(["192.0.2.0/24"], "192.0.2.77", "192.0.3.1", id="ipv4-cidr"),
    pytest.param(["2001:db8::9"], "2001:db8::9", "2001:db8::a", id="ipv6"),
    pytest.param(["2001:db8:1::/48"], "2001:db8:1:ffff::1", "2001:db8:2::1", id="ipv6-cidr"),
    pytest.param(["198.51.100.9", "2001:db8:1::/48"], "::ffff:198.51.100.9", "::ffff:198.51.100.10", id="ipv4-mapped"),
]


@pytest.mark.parametrize(("ips", "inside", "outside"), ALLOWLISTS)
async def test_allowlist_on_every_path(kg: Keygate, unbound: Keygate, owner_id: int, ips: list[str], inside: str, outside: str) -> None:
    # The default service binds sessions to their address; ``unbound`` does not, so there only the
    # allowlist can refuse a session token that moved.
    for service in (kg, unbound):
        created = await new_key(service, owner_id, ips)
        app = create_app(keygate=service)
        async with client_at(app, inside) as allowed, client_at(app, outside) as elsewhere:
            assert refused_for_address(await sign_in(elsewhere, created))
            assert refused_for_address(await elsewhere.get("/AP/GetUserAPIKeys", headers=signed(created)))
            assert (await allowed.get("/AP/GetUserAPIKeys", headers=signed(created))).status_code == 200
            r = await sign_in(allowed, created)
            assert r.status_code == 200, r.text
            token = r.json()["SessionToken"]
            moved = await elsewhere.get("/AP/GetUserInfo", headers={"aptoken": token})
            assert moved.status_code == 401 and moved.json()["errorcode"] == 20
            assert (await allowed.get("/AP/GetUserInfo", headers={"aptoken": token})).status_code == 200


async def test_unbound_key_session_moves_within_its_allowlist(unbound: Keygate, owner_id: int) -> None:
    created = await new_key(unbound, owner_id, ["192.0.2.0/24"])
    app = create_app(keygate=unbound)
    async with client_at(app, "192.0.2.1") as first, client_at(app, "192.0.2.200") as second:
        token = (await sign_in(first, created)).json()["SessionToken"]
        assert (await second.get("/AP/GetUserInfo", headers={"aptoken": token})).status_code == 200


async def test_null_allowlist_in_an_edit_keeps_the_allowlist(kg: Keygate, make_user, make_key) -> None:
    """A client that sends ``"IpAllowlist": null`` while renaming a key must not open it to every IP."""
    user = await make_user()
    created = await make_key(user.user_id, ["Trading"], [ALLOWED])
    app = create_app(keygate=kg)
    async with client_at(app, ALLOWED) as owner:
        r = await owner.post("/AP/AuthenticateUser", json={"UserName": user.username, "Password": user.password})
        token = r.json()["SessionToken"]
        r = await owner.post("/AP/UpdateUserAPIKey", headers={"aptoken": token},
                             json={"APIKey": created.key.api_key, "Label": "renamed", "IpAllowlist": None, "Permissions": None})
        assert r.status_code == 200, r.text
        assert r.json()["IpAllowlist"] == [ALLOWED] and r.json()["Permissions"] == ["Trading"]
    async with client_at(app, ATTACKER) as attacker:
        assert refused_for_address(await sign_in(attacker, created))
