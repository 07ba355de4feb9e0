"""/healthz and /readyz in process: their answers, their OpenAPI entries, and a bug that stays a 500."""

from __future__ import annotations

import base64
import secrets
from pathlib import Path

import httpx
from sqlalchemy import text

from keygate.api import create_app
from keygate.config import Settings
from keygate.service import Keygate


async def test_healthz_and_readyz_answer_when_all_is_up(client: httpx.AsyncClient) -> None:
    live = await client.get("/healthz")
    assert live.status_code == 200 and live.json()["status"] == "alive" and live.json()["result"] is True
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"result": True, "errormsg": None, "errorcode": 0, "detail": None, "status": "ready",
                            "checks": {"database": "ok"}}
    assert ready.headers["cache-control"] == "no-store"


async def test_health_checks_are_in_the_openapi_document(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    assert doc["paths"]["/healthz"]["get"]["tags"] == ["Health"]
    readyz = doc["paths"]["/readyz"]["get"]
    assert set(readyz["responses"]) == {"200", "503"} and "0.5 s" in readyz["description"]
    assert "/docs" not in doc["paths"] and "/redoc" not in doc["paths"]


async def _own_service(tmp_path: Path) -> Keygate:
    kg = Keygate(Settings(data_dir=tmp_path, master_key=base64.b64encode(secrets.token_bytes(32)).decode()))
    await kg.start(bootstrap_admin=False)
    return kg


async def test_a_schema_fault_is_a_500_not_an_outage(tmp_path: Path) -> None:
    """A missing table is a broken deployment or a bug, not the database being away: no 503 for it."""
    kg = await _own_service(tmp_path)
    try:
        async with kg.engine.begin() as conn:
            await conn.execute(text("DROP TABLE sessions"))
        app = create_app(keygate=kg)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://127.0.0.1") as client:
            r = await client.post("/AP/GetUserInfo", headers={"aptoken": "x" * 40})
            assert r.status_code == 500 and r.json()["errormsg"] == "Server Error"
            assert (await client.get("/readyz")).status_code == 200  # the database itself answers
    finally:
        await kg.close()
