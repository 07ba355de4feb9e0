"""``/docs`` in a real Chromium against a real server, with every request off this machine refused.

It must render the APEX endpoints from keygate's own files, under the page's strict CSP, without a
single CSP refusal or script error.
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from keygate.config import Settings
from support import ARTIFACTS, CHROMIUM, Server, need, start_server, stop_server

DOCUMENTED_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]


@pytest.fixture(scope="module")
def docs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("docs"), master_key=base64.b64encode(secrets.token_bytes(32)).decode())
    server = start_server(settings)
    yield server
    stop_server(server)


def test_docs_page_and_assets_carry_a_strict_csp(docs_server: Server) -> None:
    with httpx.Client(base_url=docs_server.base_url, timeout=10) as http:
        page = http.get("/docs")
        assert page.status_code == 200
        csp = page.headers["content-security-policy"]
        assert csp == DOCUMENTED_CSP, csp  # docs/deployment.md
        assert "<script>" not in page.text and "cdn" not in page.text.lower() and "https://" not in page.text
        for asset in ("/docs/swagger-ui/swagger-ui-bundle.js", "/docs/swagger-ui/swagger-ui.css", "/docs/static/docs.js"):
            r = http.get(asset)
            assert r.status_code == 200 and len(r.content) > 300, asset
            assert r.headers["content-security-policy"] == csp
            assert r.headers["x-content-type-options"] == "nosniff"
        assert http.get("/redoc").headers["location"].endswith("/docs")


async def test_docs_render_offline_without_a_csp_violation(docs_server: Server) -> None:
    need(os.path.exists(CHROMIUM), "Chromium")
    from playwright.async_api import async_playwright

    refused: list[str] = []
    problems: list[str] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            page.set_default_timeout(15_000)

            async def only_this_machine(route):  # type: ignore[no-untyped-def]
                if urlsplit(route.request.url).hostname == "127.0.0.1":
                    await route.continue_()
                else:
                    refused.append(route.request.url)
                    await route.abort()

            await page.route("**/*", only_this_machine)
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            # A CSP refusal is reported as a console error ("Refused to load/execute/apply ...").
            page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}") if msg.type in ("error", "warning") else None)
            await page.goto(f"{docs_server.base_url}/docs")
            operation = page.locator(".opblock-post").filter(has=page.locator('[data-path="/AP/AuthenticateUser"]'))
            await operation.wait_for()
            await operation.locator(".opblock-summary-control").click()  # open it: its parameters render too
            await operation.locator(".parameters").get_by_text("Signature", exact=True).wait_for()
            assert await page.locator(".opblock-tag-section").count() >= 4  # public, private, forward auth, health
            assert await page.locator('[data-path="/readyz"]').count() == 1
            assert await page.locator('[data-path="/AP/GetUserInfo"]').count() == 2  # GET and POST
            Path(ARTIFACTS / "docs").mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "docs" / "docs.png"), full_page=False)
        finally:
            await browser.close()
    assert not refused, f"/docs asked for something off this machine: {refused}"
    assert not problems, problems
