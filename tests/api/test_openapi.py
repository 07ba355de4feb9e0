"""The OpenAPI document and the docs page describe every endpoint, its headers and its replies."""

from __future__ import annotations

import httpx

from keygate.api.endpoints import ENDPOINTS

REQUIRED = {"Ping", "AuthenticateUser", "Authenticate", "Authenticate2FA", "WebAuthenticateUser", "LogOut", "GetUserInfo",
            "GetUserPermissions", "GetUserAccounts", "AddUserAPIKey", "GetUserAPIKeys", "RemoveUserAPIKey", "UpdateUserAPIKey"}


def _resolve(doc: dict, schema: dict) -> dict:
    """The schema behind a ``$ref``; for a choice (``oneOf``/``anyOf``), the properties of every alternative."""
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    choices = schema.get("oneOf") or schema.get("anyOf")
    if choices:
        properties: dict = {}
        for choice in choices:
            properties.update(_resolve(doc, choice).get("properties", {}))
        return {**schema, "properties": properties}
    return schema


async def test_openapi_lists_every_endpoint_with_headers_and_replies(client: httpx.AsyncClient) -> None:
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    assert REQUIRED <= set(ENDPOINTS)
    for name in ENDPOINTS:
        item = doc["paths"].get(f"/AP/{name}")
        assert item is not None, name
        assert {"get", "post"} <= set(item), name
        for op in (item["get"], item["post"]):
            ok = op["responses"]["200"]["content"]["application/json"]["schema"]
            assert _resolve(doc, ok), name
            if name != "Ping":
                headers = {p["name"].lower() for p in op.get("parameters", []) if p["in"] == "header"}
                assert headers, name
                assert any(code.startswith("4") for code in op["responses"]), name
                for code, resp in op["responses"].items():
                    if code.startswith("4"):
                        assert _resolve(doc, resp["content"]["application/json"]["schema"]).get("properties"), (name, code)


async def test_apex_operation_ids_are_unique(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    ids = [op["operationId"] for path, item in doc["paths"].items() if path.startswith("/AP/") for op in item.values()]
    assert len(ids) == len(set(ids)) == 2 * len(ENDPOINTS)


async def test_authenticate_user_documents_the_four_headers(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    for method in ("get", "post"):
        op = doc["paths"]["/AP/AuthenticateUser"][method]
        headers = {p["name"] for p in op["parameters"] if p["in"] == "header"}
        assert {"APIKey", "Signature", "UserId", "Nonce"} <= headers
        ok = _resolve(doc, op["responses"]["200"]["content"]["application/json"]["schema"])
        assert {"Authenticated", "SessionToken", "User", "Locked", "errormsg"} <= set(ok["properties"])
        fail = _resolve(doc, op["responses"]["401"]["content"]["application/json"]["schema"])
        assert {"Authenticated", "Locked", "errormsg"} <= set(fail["properties"])
    post = doc["paths"]["/AP/AuthenticateUser"]["post"]
    body = post["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert {"APIKey", "Signature", "UserId", "Nonce"} <= set(body)


async def test_private_endpoints_document_the_session_header_and_key_replies(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    for name in ("GetUserInfo", "GetUserAPIKeys", "AddUserAPIKey", "UpdateUserAPIKey", "RemoveUserAPIKey", "LogOut"):
        op = doc["paths"][f"/AP/{name}"]["post"]
        assert "aptoken" in {p["name"].lower() for p in op["parameters"]}, name
    created = _resolve(doc, doc["paths"]["/AP/AddUserAPIKey"]["post"]["responses"]["200"]["content"]["application/json"]["schema"])
    assert "APISecret" in str(created)
    listed = _resolve(doc, doc["paths"]["/AP/GetUserAPIKeys"]["post"]["responses"]["200"]["content"]["application/json"]["schema"])
    assert listed["type"] == "array" and "APISecret" not in str(_resolve(doc, listed["items"]))
    two_fa = doc["paths"]["/AP/Authenticate2FA"]["get"]
    assert {"Pending2FaToken", "Code"} <= {p["name"] for p in two_fa["parameters"]}


async def test_docs_page_answers(client: httpx.AsyncClient) -> None:
    r = await client.get("/docs")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "openapi.json" in r.text
