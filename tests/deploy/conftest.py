"""Fixtures of the deployment tests: a keygate server that trusts the proxies on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from proxy_support import IP_FAILURES

from keygate.config import Settings
from keygate.service import Keygate
from support import Server, start_server, stop_server


@pytest.fixture(scope="module")
def keygate_behind_proxies(settings: Settings, kg: Keygate) -> Iterator[Server]:
    """``keygate serve`` on the session's database, trusting 127.0.0.1 (where nginx and HAProxy connect from)."""
    srv = start_server(settings, {"KEYGATE_TRUSTED_PROXIES": "127.0.0.1", "KEYGATE_THROTTLE_IP_FAILURES": str(IP_FAILURES)})
    yield srv
    stop_server(srv)
