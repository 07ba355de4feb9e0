"""Debian's HAProxy with ``option forwardfor``, running docs/deployment.md's configuration.

HAProxy keeps the ``X-Forwarded-For: 9.9.9.9`` line a client sends and adds a line of its own with the
real client after it. keygate must read both lines as one list and believe only HAProxy's: a key
allowlisted to 9.9.9.9 is refused, one allowlisted to the real client accepted.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from proxy_support import (
    HAPROXY,
    audited_addresses,
    client_from,
    doc_block,
    echo_upstream,
    free_ports,
    loopback_pair,
    need_binary,
    received,
    run_haproxy,
    signed,
)

from support import Server

ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENT = (ROOT / "docs" / "deployment.md").read_text()
SPOOF = "9.9.9.9"


def haproxy_config(port: int, backend: str) -> str:
    block = doc_block(DEPLOYMENT, "## Behind a reverse proxy", "## Forward auth", "haproxy")
    assert "bind :8080" in block and "127.0.0.1:8000" in block and "option forwardfor" in block
    return block.replace("bind :8080", f"bind 127.0.0.1:{port}").replace("127.0.0.1:8000", backend)


@pytest.fixture(scope="module")
def haproxy(keygate_behind_proxies: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    need_binary(HAPROXY, "haproxy")
    (port,) = free_ports(1)
    backend = keygate_behind_proxies.base_url.removeprefix("http://")
    with run_haproxy(tmp_path_factory.mktemp("haproxy"), haproxy_config(port, backend), port):
        yield f"http://127.0.0.1:{port}"


def test_haproxy_adds_a_second_x_forwarded_for_line(tmp_path: Path) -> None:
    """What keygate receives from HAProxy: the client's line, then HAProxy's (seen by the echo upstream)."""
    need_binary(HAPROXY, "haproxy")
    here, _ = loopback_pair()
    (port,) = free_ports(1)
    with (echo_upstream() as upstream, run_haproxy(tmp_path, haproxy_config(port, f"127.0.0.1:{upstream.port}"), port),
          client_from(here) as client):
        reply = client.get(f"http://127.0.0.1:{port}/AP/Ping", headers={"X-Forwarded-For": SPOOF})
    assert received(reply)["x-forwarded-for"] == [SPOOF, here]
    assert received(reply)["x-forwarded-proto"] == ["http"]


async def test_two_line_x_forwarded_for_believes_only_haproxys_line(haproxy: str, kg, make_user, make_key) -> None:  # type: ignore[no-untyped-def]
    here, _ = loopback_pair()
    user = await make_user()
    spoofed = await make_key(user.user_id, ["Trading"], [SPOOF])
    real = await make_key(user.user_id, ["Trading"], [here])
    with client_from(here) as client:
        refused = client.post(f"{haproxy}/AP/AuthenticateUser", headers={**signed(spoofed), "X-Forwarded-For": SPOOF})
        assert refused.status_code == 401 and refused.json()["errormsg"] == "This API key may not be used from your IP address", refused.text
        accepted = client.post(f"{haproxy}/AP/AuthenticateUser", headers={**signed(real), "X-Forwarded-For": SPOOF})
        assert accepted.status_code == 200 and accepted.json()["Authenticated"] is True, accepted.text
        # A Forwarded header of the client's own is dropped by the documented configuration.
        for key, status in ((spoofed, 401), (real, 200)):
            reply = client.post(f"{haproxy}/AP/AuthenticateUser", headers={**signed(key), "Forwarded": f"for={SPOOF}"})
            assert reply.status_code == status, reply.text
    assert await audited_addresses(kg, real, 2) == [here, here]
    assert set(await audited_addresses(kg, spoofed, 2)) == {here}
    assert re.fullmatch(r"127\.\d+\.\d+\.5", here)
