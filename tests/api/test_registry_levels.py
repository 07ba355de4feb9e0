"""The endpoint registry enforces each endpoint's declared authentication level, so the OpenAPI
document (built from the same declarations) and the behaviour cannot differ; and the adapters write
no audit rows of their own."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from api_helpers import key_token, password_token, signed_headers

from keygate.api.endpoints import ENDPOINTS, PRIVATE_LEVELS, endpoint

PRIVATE = sorted(name for name, ep in ENDPOINTS.items() if ep.auth in PRIVATE_LEVELS)
NEEDS_PASSWORD = sorted(name for name, ep in ENDPOINTS.items() if ep.auth in ("password-session", "admin"))
ADMIN_ONLY = sorted(name for name, ep in ENDPOINTS.items() if ep.auth == "admin")
SRC = Path(__file__).resolve().parents[2] / "src" / "keygate"


def _refused(r: httpx.Response, status: int) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["result"] is False and body["errorcode"] == 20, body


@pytest.mark.parametrize("name", PRIVATE)
async def test_private_endpoints_refuse_a_caller_without_credentials(client: httpx.AsyncClient, name: str) -> None:
    _refused(await client.post(f"/AP/{name}", json={}), 401)


@pytest.mark.parametrize("name", NEEDS_PASSWORD)
async def test_password_and_admin_endpoints_refuse_a_key(client: httpx.AsyncClient, reader, make_key, name: str) -> None:
    created = await make_key(reader.user_id, ["Trading", "Withdraw", "Deposit"])
    _refused(await client.post(f"/AP/{name}", headers={"aptoken": await key_token(client, created)}, json={}), 403)
    _refused(await client.post(f"/AP/{name}", headers=signed_headers(created), json={}), 403)


@pytest.mark.parametrize("name", ADMIN_ONLY)
async def test_admin_endpoints_refuse_a_person_who_is_not_one(client: httpx.AsyncClient, reader, name: str) -> None:
    token = await password_token(client, reader.username, reader.password)
    _refused(await client.post(f"/AP/{name}", headers={"aptoken": token}, json={"UserId": reader.user_id}), 403)


def test_the_openapi_document_says_what_the_registry_enforces(api_app) -> None:  # type: ignore[no-untyped-def]
    paths = api_app.openapi()["paths"]
    for name, ep in ENDPOINTS.items():
        op = paths[f"/AP/{name}"]["post"]
        headers = {p["name"] for p in op.get("parameters", []) if p["in"] == "header"}
        if ep.auth in PRIVATE_LEVELS:
            assert "aptoken" in headers and "403" in op["responses"] and "401" in op["responses"], name
        else:
            assert "aptoken" not in headers, name


def test_an_unknown_level_cannot_be_declared() -> None:
    with pytest.raises(ValueError):
        endpoint("Nope", "never registered", auth="sometimes")


@pytest.mark.parametrize("adapter", ["console", "cli", "api"])
def test_adapters_write_no_audit_rows_of_their_own(adapter: str) -> None:
    """Every audit row comes from a use case in the service; an adapter only calls them."""
    found = []
    for path in (SRC / adapter).rglob("*.py"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\.audit\.(record|tally)\(|AuditEvent\(|audit import event|\bunits\.begin\(", line):
                found.append(f"{path.relative_to(SRC)}:{n}: {line.strip()}")
    assert not found, found
