"""Helpers for tests against a real server process: WebSocket frames, sign-in, the document's schemas."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema_rs
from websockets.asyncio.client import ClientConnection


def ws_url(server, path: str = "/WSGateway") -> str:  # type: ignore[no-untyped-def]
    return server.base_url.replace("http://", "ws://") + path


def frame(i: object, name: object, payload: object = None, m: int = 0) -> str:
    return json.dumps({"m": m, "i": i, "n": name, "o": json.dumps({} if payload is None else payload)})


async def ask(ws: ClientConnection, text: str) -> dict[str, Any]:
    """Send one frame and read the reply, checking that it is compact JSON, as is the body in its ``o``."""
    await ws.send(text)
    raw = await ws.recv()
    assert isinstance(raw, str)
    reply = json.loads(raw)
    assert raw == compact(reply), raw
    assert isinstance(reply["o"], str) and reply["o"] == compact(json.loads(reply["o"])), reply["o"]
    return reply  # type: ignore[no-any-return]


def compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def body(reply: dict[str, Any]) -> Any:
    return json.loads(reply["o"])


async def password_token(client: httpx.AsyncClient, username: str, password: str) -> str:
    r = await client.post("/AP/AuthenticateUser", json={"UserName": username, "Password": password})
    assert r.status_code == 200, r.text
    return str(r.json()["SessionToken"])


def check_against_document(doc: dict[str, Any], schema: dict[str, Any], value: object) -> None:
    """Validate ``value`` against a schema of the OpenAPI document (its ``$ref``s resolved in the document)."""
    jsonschema_rs.validator_for({**schema, "components": doc["components"]}).validate(value)


def reply_schema(doc: dict[str, Any], path: str, status: int, method: str = "post") -> dict[str, Any]:
    return doc["paths"][path][method]["responses"][str(status)]["content"]["application/json"]["schema"]  # type: ignore[no-any-return]
