"""Console test support: a real Chromium through Playwright, and a plain-HTTP console client.

Test modules import the fixtures they use from here (``from console_support import ...``).
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from support import ARTIFACTS, CHROMIUM, need

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]
SCREENSHOTS = ARTIFACTS / "console"
_CSRF = re.compile(r'name="csrf_token" value="([^"]*)"')
_FORM_ID = re.compile(r'name="form_id" value="([^"]*)"')


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[object]:
    """One headless Chromium for the whole run (each test opens its own context: its own cookies)."""
    need(os.path.exists(CHROMIUM), "Chromium")
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        await chromium.close()


@pytest.fixture
async def context(browser):  # type: ignore[no-untyped-def]
    ctx = await browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 860})
    ctx.set_default_timeout(10_000)
    yield ctx
    await ctx.close()


@pytest.fixture
async def page(context):  # type: ignore[no-untyped-def]
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # Error statuses are part of the console's answers (401 on a wrong password); CSP refusals are not.
    page.on("console", lambda msg: errors.append(msg.text)
            if msg.type == "error" and not msg.text.startswith("Failed to load resource") else None)
    yield page
    # A CSP violation or a script error shows up here: the console must run clean.
    assert not errors, f"browser errors: {errors}"


async def shot(page, name: str, db: str) -> Path:  # type: ignore[no-untyped-def]
    """Save a full-page screenshot as test-artifacts/console/<name>-<db>.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}-{db}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


async def sign_in(page, base_url: str, username: str, password: str) -> None:  # type: ignore[no-untyped-def]
    await page.goto(f"{base_url}/console/login")
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(f"{base_url}/console/")


class ConsoleHttp:
    """The console driven with plain HTTP, for checks a browser would not let us make (forged forms)."""

    def __init__(self, base_url: str) -> None:
        self.base = f"{base_url}/console"
        self.http = httpx.Client(follow_redirects=True, timeout=10)

    def close(self) -> None:
        self.http.close()

    @staticmethod
    def csrf_of(html: str) -> str:
        m = _CSRF.search(html)
        assert m, "page has no CSRF field"
        return m.group(1)

    @staticmethod
    def form_id_of(html: str) -> str:
        m = _FORM_ID.search(html)
        assert m, "page has no form id"
        return m.group(1)

    def get(self, path: str) -> httpx.Response:
        return self.http.get(self.base + path)

    def post(self, path: str, data: dict[str, object]) -> httpx.Response:
        return self.http.post(self.base + path, data=data)  # type: ignore[arg-type]

    def sign_in(self, username: str, password: str) -> httpx.Response:
        page = self.get("/login")
        r = self.post("/login", {"csrf_token": self.csrf_of(page.text), "username": username, "password": password})
        assert r.status_code == 200 and str(r.url).endswith("/console/"), r.text[:500]
        return r


@pytest.fixture
def console_http(server):  # type: ignore[no-untyped-def]
    client = ConsoleHttp(server.base_url)
    yield client
    client.close()


@pytest.fixture
def db(database_url: str) -> str:
    return "pg" if database_url.startswith("postgresql") else "sqlite"
