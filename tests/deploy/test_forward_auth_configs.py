"""docs/deployment.md's Traefik ``ForwardAuth`` and Envoy ``ext_authz`` configurations, checked without the
programs (neither is installed here): the YAML blocks are read out of the page and must pass every
credential header and the client address to keygate, and every identity header to the upstream. The
request shapes those proxies send (Envoy's path suffix, ``X-Keygate-Require``) are then sent to keygate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import yaml
from proxy_support import doc_block, signed

from keygate.api import create_app

DEPLOYMENT = (Path(__file__).resolve().parents[2] / "docs" / "deployment.md").read_text()
CREDENTIALS = {"apikey", "signature", "userid", "nonce", "aptoken"}
IDENTITY = {"x-keygate-user-id", "x-keygate-username", "x-keygate-permissions", "x-keygate-api-key", "x-keygate-auth"}


def yaml_blocks() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    start, end = "## Forward auth with Traefik and Envoy", "## Operating"
    traefik = yaml.safe_load(doc_block(DEPLOYMENT, start, end, "yaml", 0))
    envoy = yaml.safe_load(doc_block(DEPLOYMENT, start, end, "yaml", 1))["http_filters"]
    return traefik, envoy


def test_the_page_says_they_were_not_run_here() -> None:
    section = DEPLOYMENT[DEPLOYMENT.index("## Forward auth with Traefik and Envoy"):]
    assert "**not run here**" in section


def test_traefik_forward_auth_passes_credentials_and_identity() -> None:
    traefik, _ = yaml_blocks()
    auth = traefik["http"]["middlewares"]["keygate"]["forwardAuth"]
    url = httpx.URL(auth["address"])
    assert url.path == "/keygate/authorize" and url.params.get_list("require") == ["Trading"]
    assert auth["trustForwardHeader"] is False  # the client's own X-Forwarded-For is not passed on
    sent = {h.lower() for h in auth.get("authRequestHeaders", [])}
    # No list means "every header"; a list must hold each credential header and the client address.
    assert not sent or CREDENTIALS | {"x-forwarded-for", "x-forwarded-proto"} <= sent, sent
    assert IDENTITY <= {h.lower() for h in auth["authResponseHeaders"]}
    assert "keygate" in traefik["http"]["routers"]["trading"]["middlewares"]


def _patterns(matchers: dict[str, Any]) -> set[str]:
    found = set()
    for pattern in matchers["patterns"]:
        assert set(pattern) <= {"exact", "ignore_case"}, pattern
        name = pattern["exact"]
        assert name == name.lower() or pattern.get("ignore_case"), pattern  # Envoy sees header names lower-case
        found.add(name.lower())
    return found


def test_envoy_ext_authz_passes_credentials_and_identity() -> None:
    _, envoy = yaml_blocks()
    authz = next(f for f in envoy if f["name"] == "envoy.filters.http.ext_authz")["typed_config"]
    assert authz["@type"].endswith("ext_authz.v3.ExtAuthz") and authz["failure_mode_allow"] is False
    service = authz["http_service"]
    assert service["path_prefix"] == "/keygate/authorize"
    request = service["authorization_request"]
    assert CREDENTIALS | {"x-forwarded-for", "x-forwarded-proto"} <= _patterns(request["allowed_headers"])
    assert {h["key"]: h["value"] for h in request["headers_to_add"]} == {"X-Keygate-Require": "Trading"}
    response = service["authorization_response"]
    assert IDENTITY <= _patterns(response["allowed_upstream_headers"])
    assert "retry-after" in _patterns(response["allowed_client_headers"])
    assert envoy[-1]["name"] == "envoy.filters.http.router"


async def test_keygate_answers_the_requests_envoy_makes(kg, make_user, make_key) -> None:  # type: ignore[no-untyped-def]
    """Envoy asks at path_prefix + the client's path, with X-Keygate-Require added."""
    user = await make_user()
    reader = await make_key(user.user_id, [])
    trader = await make_key(user.user_id, ["Trading"])
    transport = httpx.ASGITransport(app=create_app(keygate=kg), client=("198.18.7.7", 5000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        ok = await c.get("/keygate/authorize/AP/SendOrder?x=1", headers={**signed(trader), "X-Keygate-Require": "Trading"})
        assert ok.status_code == 200 and ok.headers["X-Keygate-User-Id"] == str(user.user_id), ok.text
        denied = await c.post("/keygate/authorize/AP/SendOrder", headers={**signed(reader), "X-Keygate-Require": "Trading"})
        assert denied.status_code == 403 and "Trading" in denied.json()["errormsg"]
        # A client that adds the header itself can only add a requirement.
        assert (await c.get("/keygate/authorize", headers={**signed(trader), "X-Keygate-Require": "Withdraw"})).status_code == 403
        bad = await c.get("/keygate/authorize", headers={**signed(trader), "X-Keygate-Require": "Everything"})
        assert bad.status_code == 400 and bad.json()["errorcode"] == 100
        # Every refusal also carries its body in X-Keygate-Error (what nginx hands to the client).
        for refused in (denied, bad, await c.get("/keygate/authorize")):
            assert json.loads(refused.headers["X-Keygate-Error"]) == refused.json()
            assert refused.headers["Cache-Control"] == "no-store"
