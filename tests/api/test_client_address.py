"""The client address and scheme: the trusted-proxy walk over every X-Forwarded-For line and RFC 7239
Forwarded, canonical bounded addresses, and the one middleware that writes them into the scope."""

from __future__ import annotations

import ipaddress
import json

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from keygate.api import create_app
from keygate.api.proxy import ProxyHeaders
from keygate.api.wire import ClientAddress, ConflictingForwarding
from keygate.domain.iprules import canonical_address

TRUSTED = ClientAddress(("10.0.0.0/8", "fd00::/8"))
PROXY = "10.0.0.1"
CLIENT = "198.51.100.9"
SPOOF = "9.9.9.9"


def scope(peer: str | None, *headers: tuple[str, str], kind: str = "http") -> dict[str, object]:
    return {"type": kind, "scheme": "http" if kind == "http" else "ws", "client": (peer, 40000) if peer else None,
            "headers": [(k.lower().encode(), v.encode("latin-1")) for k, v in headers]}


def client_of(*headers: tuple[str, str], peer: str = PROXY) -> str | None:
    found, _ = TRUSTED.resolve(scope(peer, *headers))
    return found[0] if found else None


def proto_of(*headers: tuple[str, str], peer: str = PROXY) -> str | None:
    return TRUSTED.resolve(scope(peer, *headers))[1]


def test_every_x_forwarded_for_line_is_read_in_order() -> None:
    # HAProxy's option forwardfor: the client's own line first, then HAProxy's with the real client.
    assert client_of(("X-Forwarded-For", SPOOF), ("X-Forwarded-For", CLIENT)) == CLIENT
    assert client_of(("X-Forwarded-For", f"{SPOOF}, 8.8.8.8"), ("X-Forwarded-For", f"{CLIENT}, 10.0.0.7")) == CLIENT
    assert client_of(("X-Forwarded-For", CLIENT), ("X-Forwarded-For", "10.0.0.7")) == CLIENT


@pytest.mark.parametrize(("forwarded", "client"), [
    (f"for={CLIENT}", CLIENT),
    (f"for={CLIENT};proto=https;by=10.0.0.1", CLIENT),
    (f'for="{CLIENT}:4711"', CLIENT),
    ('for="[2001:db8:cafe::17]:4711"', "2001:db8:cafe::17"),
    ('for="[2001:DB8:CAFE:0:0:0:0:17]"', "2001:db8:cafe::17"),
    ('for="[::ffff:198.51.100.9]"', CLIENT),
    (f"for={SPOOF}, for={CLIENT}", CLIENT),
    (f"For={SPOOF}, FOR={CLIENT};Proto=HTTPS, for=10.0.0.7", CLIENT),
    (f'for={SPOOF}, for="_hidden", for=10.0.0.7', "10.0.0.7"),  # obfuscated: the proxy that reported it
    (f"for={SPOOF}, for=unknown", PROXY),
    (f"for={SPOOF}, proto=https", PROXY),  # an element without for=
    (f"for={SPOOF}, for=not-an-ip", PROXY),
    (f'for={SPOOF}, for="unclosed', PROXY),
    (f"for={SPOOF};for={CLIENT}", PROXY),  # a parameter twice is not an element
    ("for=10.0.0.9, for=10.0.0.7", "10.0.0.9"),  # every hop trusted: the leftmost
    ('for="203.0.113.7%25eth0"', PROXY),
])
def test_forwarded_header(forwarded: str, client: str) -> None:
    assert client_of(("Forwarded", forwarded)) == client


def test_every_forwarded_line_is_read_in_order() -> None:
    assert client_of(("Forwarded", f"for={SPOOF}"), ("Forwarded", f"for={CLIENT}")) == CLIENT
    assert client_of(("Forwarded", 'for="broken'), ("Forwarded", f"for={CLIENT}")) == CLIENT


@pytest.mark.parametrize(("forwarded", "client"), [
    (f"{CLIENT}, 10.0.0.2", CLIENT),
    (f"{SPOOF}, {CLIENT}", CLIENT),
    (f"{SPOOF}, not-an-ip", PROXY),
    (f"{SPOOF}, unknown, 10.0.0.2", "10.0.0.2"),  # the trusted hop that reported it
    ("10.0.0.3, 10.0.0.2", "10.0.0.3"),
    (f"{SPOOF}, [2001:db8::1]:443", "2001:db8::1"),
    (f"{SPOOF}, {CLIENT}:5555", CLIENT),
    (f"{SPOOF}, 2001:DB8::0001", "2001:db8::1"),
    (f"{SPOOF}, ::ffff:{CLIENT}", CLIENT),
    (f"{SPOOF}, 203.0.113.7%{'x' * 80}", PROXY),  # the 92-character address of issue 10
    (f"{SPOOF}, fe80::1%eth0", PROXY),  # a zone names an interface of the proxy, not the client
    (", ,", PROXY),
])
def test_x_forwarded_for_walk(forwarded: str, client: str) -> None:
    assert client_of(("X-Forwarded-For", forwarded)) == client


def test_headers_of_an_untrusted_peer_are_ignored() -> None:
    for headers in ([("X-Forwarded-For", SPOOF)], [("Forwarded", f"for={SPOOF}")], [("X-Forwarded-Proto", "https")]):
        assert client_of(*headers, peer=CLIENT) == CLIENT
        assert proto_of(*headers, peer=CLIENT) is None
    no_proxies = ClientAddress(())
    assert no_proxies.resolve(scope(PROXY, ("X-Forwarded-For", SPOOF)))[0] == (PROXY, 40000)


def test_both_headers_must_name_the_same_client() -> None:
    assert client_of(("X-Forwarded-For", CLIENT), ("Forwarded", f"for={CLIENT}")) == CLIENT
    # A proxy that writes only X-Forwarded-For passes on the client's Forwarded, and the other way round.
    with pytest.raises(ConflictingForwarding):
        client_of(("X-Forwarded-For", CLIENT), ("Forwarded", f"for={SPOOF}"))
    with pytest.raises(ConflictingForwarding):
        client_of(("X-Forwarded-For", SPOOF), ("Forwarded", f"for={CLIENT}"))


def test_scheme_from_trusted_proxies() -> None:
    assert proto_of(("X-Forwarded-For", CLIENT), ("X-Forwarded-Proto", "https")) == "https"
    assert proto_of(("X-Forwarded-Proto", "HTTPS")) == "https"
    assert proto_of(("X-Forwarded-Proto", "http")) == "http"
    assert proto_of(("X-Forwarded-Proto", "gopher")) is None
    assert proto_of(("Forwarded", f"for={CLIENT};proto=https")) == "https"
    assert proto_of(("Forwarded", f"for={SPOOF};proto=http, for={CLIENT};proto=https, for=10.0.0.2;proto=http")) == "https"
    assert proto_of(("Forwarded", "proto=https")) == "https"
    # A list of them lined up with the hops: the one beside the client's.
    assert proto_of(("X-Forwarded-For", f"{CLIENT}, 10.0.0.2"), ("X-Forwarded-Proto", "https, http")) == "https"


@pytest.mark.parametrize(("raw", "canonical"), [
    ("192.0.2.1", "192.0.2.1"), ("::ffff:192.0.2.1", "192.0.2.1"), ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
    ("fe80::1%eth0", "fe80::1"), ("192.0.2.1%eth0", None), ("203.0.113.7%" + "y" * 80, None), ("fe80::1%", None),
    ("testclient", None), ("", None), ("01.2.3.4", None),
])
def test_canonical_address(raw: str, canonical: str | None) -> None:
    assert canonical_address(raw) == canonical


_text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=120)


@given(xff=st.lists(_text, max_size=3), fwd=st.lists(_text, max_size=3), peer=st.sampled_from([PROXY, "fd00::1", CLIENT]))
def test_any_headers_give_a_canonical_bounded_address(xff: list[str], fwd: list[str], peer: str) -> None:
    headers = [("X-Forwarded-For", v) for v in xff] + [("Forwarded", v) for v in fwd]
    try:
        client, proto = TRUSTED.resolve(scope(peer, *headers))
    except ConflictingForwarding:
        return
    assert client is not None
    address = client[0]
    assert len(address) <= 39 and canonical_address(address) == address
    assert str(ipaddress.ip_address(address)) == address
    assert proto in (None, "http", "https")


def _probe_app() -> Starlette:
    async def http(request: Request) -> JSONResponse:
        return JSONResponse({"client": request.scope["client"], "scheme": request.url.scheme})

    app = Starlette(routes=[Route("/", http)])
    app.add_middleware(ProxyHeaders, client_address=ClientAddress(("127.0.0.0/8",)))
    return app


async def test_middleware_writes_client_and_scheme_into_the_scope() -> None:
    transport = httpx.ASGITransport(app=_probe_app(), client=("127.0.0.1", 5000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        body = (await c.get("/", headers={"X-Forwarded-For": CLIENT, "X-Forwarded-Proto": "https"})).json()
        assert body == {"client": [CLIENT, 0], "scheme": "https"}
        assert (await c.get("/")).json() == {"client": ["127.0.0.1", 5000], "scheme": "http"}
        conflict = await c.get("/", headers={"X-Forwarded-For": CLIENT, "Forwarded": f"for={SPOOF}"})
        assert conflict.status_code == 400 and conflict.json()["errorcode"] == 100 and "Forwarded" in conflict.json()["errormsg"]
    untrusted = httpx.ASGITransport(app=_probe_app(), client=(CLIENT, 5000))
    async with httpx.AsyncClient(transport=untrusted, base_url="http://testserver") as c:
        body = (await c.get("/", headers={"X-Forwarded-For": SPOOF, "X-Forwarded-Proto": "https"})).json()
        assert body == {"client": [CLIENT, 5000], "scheme": "http"}


async def test_middleware_on_websocket_connections() -> None:
    seen: list[dict[str, object]] = []

    async def inner(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        seen.append(scope)

    middleware = ProxyHeaders(inner, client_address=ClientAddress(("127.0.0.0/8",)))
    await middleware(scope("127.0.0.1", ("X-Forwarded-For", CLIENT), ("X-Forwarded-Proto", "https"), kind="websocket"), None, None)
    await middleware(scope("127.0.0.1", ("Forwarded", 'for="[2001:db8::5]:99";proto=http'), kind="websocket"), None, None)
    assert [(s["client"], s["scheme"]) for s in seen] == [((CLIENT, 0), "wss"), (("2001:db8::5", 99), "ws")]
    sent: list[dict[str, object]] = []

    async def send(message) -> None:  # type: ignore[no-untyped-def]
        sent.append(message)

    conflict = scope("127.0.0.1", ("X-Forwarded-For", CLIENT), ("Forwarded", f"for={SPOOF}"), kind="websocket")
    await middleware(conflict, None, send)
    assert len(seen) == 2 and sent[0]["type"] == "websocket.close" and sent[0]["code"] == 1008


async def test_console_cookies_secure_and_redirects_https_behind_a_tls_proxy(kg) -> None:  # type: ignore[no-untyped-def]
    proxied = create_app(kg.settings.model_copy(update={"trusted_proxies": ("127.0.0.1",)}), keygate=kg)
    via_tls = {"X-Forwarded-For": CLIENT, "X-Forwarded-Proto": "https"}
    transport = httpx.ASGITransport(app=proxied, client=("127.0.0.1", 5000))
    async with httpx.AsyncClient(transport=transport, base_url="http://keygate.example") as c:
        login = await c.get("/console/login", headers=via_tls)
        assert login.status_code == 200
        cookies = login.headers.get_list("set-cookie")
        assert cookies and all("secure" in h.lower() for h in cookies), cookies
        slash = await c.get("/console", headers=via_tls)
        assert slash.status_code in (307, 308) and slash.headers["location"] == "https://keygate.example/console/"
        home = await c.get("/", headers=via_tls)
        assert str(httpx.URL("https://keygate.example/").join(home.headers["location"])) == "https://keygate.example/console/"
        plain = await c.get("/console/login", headers={"X-Forwarded-For": CLIENT})
        assert all("secure" not in h.lower() for h in plain.headers.get_list("set-cookie"))
    spoofer = httpx.ASGITransport(app=proxied, client=(CLIENT, 5000))
    async with httpx.AsyncClient(transport=spoofer, base_url="http://keygate.example") as c:
        login = await c.get("/console/login", headers={"X-Forwarded-Proto": "https"})
        assert all("secure" not in h.lower() for h in login.headers.get_list("set-cookie"))
        assert (await c.get("/console", headers={"X-Forwarded-Proto": "https"})).headers["location"].startswith("http://")


def test_forwarded_json_is_not_confused_by_quoted_commas() -> None:
    assert client_of(("Forwarded", f'for={SPOOF};by="a,b", for={CLIENT}')) == CLIENT
    assert json.dumps(client_of(("Forwarded", f'for="{CLIENT}";ext="x\\"y"'))) == json.dumps(CLIENT)
