"""The usage a user can see, in a real Chromium against a real server process: after real signed
calls and refusals, the key's row shows its last use (time and address) and a small chart, and the
key's usage page shows the last 24 hours and 7 days with bars of the right heights."""

from __future__ import annotations

import secrets
import time
from datetime import datetime, timezone

import httpx
from console_support import browser, context, db, page, shot, sign_in  # noqa: F401  (fixtures)

from keygate.domain.signature import compute_signature


def _signed(api_key: str, secret: str, user_id: int) -> dict[str, str]:
    nonce = str(secrets.randbelow(10**12) + 10**12)
    return {"APIKey": api_key, "Signature": compute_signature(secret, nonce, user_id, api_key), "UserId": str(user_id), "Nonce": nonce}


def hour_of(at: datetime) -> datetime:
    """The start of ``at``'s UTC hour (written here, not imported, so the test runs on code without usage)."""
    return at.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)


async def _bars(page, chart: str) -> list[dict[str, float]]:  # type: ignore[no-untyped-def]
    """Every hour of a chart as the browser laid it out: its figures and the drawn bars' heights in pixels."""
    return await page.locator(f"#{chart} g.hour").evaluate_all("""gs => gs.map(g => ({
        hour: g.dataset.hour, requests: +g.dataset.requests, refusals: +g.dataset.refusals,
        req: g.querySelector('rect.requests') ? g.querySelector('rect.requests').getBoundingClientRect().height : 0,
        ref: g.querySelector('rect.refusals') ? g.querySelector('rect.refusals').getBoundingClientRect().height : 0,
        reqTop: g.querySelector('rect.requests') ? g.querySelector('rect.requests').getBoundingClientRect().top : 0,
        refBottom: g.querySelector('rect.refusals') ? g.querySelector('rect.refusals').getBoundingClientRect().bottom : 0,
        fill: g.querySelector('rect.refusals') ? getComputedStyle(g.querySelector('rect.refusals')).fill : '',
    }))""")


async def test_the_usage_chart_shows_real_calls_and_refusals(server, make_user, make_key, page, db) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    created = await make_key(user.user_id, ["Trading"], label="usage bot")
    api_key = created.key.api_key
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        for _ in range(6):
            assert http.post("/AP/GetUserInfo", headers=_signed(api_key, created.secret, user.user_id)).status_code == 200
        for _ in range(3):  # a wrong secret: refused, and counted as the key's refusals
            assert http.post("/AP/GetUserInfo", headers=_signed(api_key, "0" * 64, user.user_id)).status_code == 401
    now = datetime.now(timezone.utc)

    await sign_in(page, server.base_url, user.username, user.password)
    row = page.locator(f"tr[data-key='{api_key}']")
    last_used = row.locator("td[data-label='Last used']")
    spark = row.get_by_role("link", name="Usage of key usage bot: 6 requests and 3 refusals in the last 24 hours")
    deadline = time.monotonic() + 8  # written behind, once a second (the calls may span two writes)
    while not await spark.count() and time.monotonic() < deadline:
        await page.wait_for_timeout(300)
        await page.reload()
    text = await last_used.inner_text()
    assert "UTC" in text and "from 127.0.0.1" in text
    await spark.wait_for()
    assert len(await _bars(page, f"spark-{api_key}")) == 24
    await shot(page, "10-profile-usage", db)

    await spark.click()
    await page.wait_for_url(f"{server.base_url}/console/keys/{api_key}/usage")
    assert "from 127.0.0.1" in await page.locator("#last-used").inner_text()
    assert (await page.locator("#day-totals").inner_text()).strip() == "6 requests, 3 refusals"
    assert (await page.locator("#week-totals").inner_text()).strip() == "6 requests, 3 refusals"
    await shot(page, "11-key-usage", db)

    hours = {hour_of(now).isoformat()}
    for chart, count in (("chart-24h", 24), ("chart-7d", 168)):
        bars = await _bars(page, chart)
        assert len(bars) == count
        last = bars[-1]
        assert last["hour"] in hours and (last["requests"], last["refusals"]) == (6, 3)
        assert last["req"] > 0 and abs(last["req"] / last["ref"] - 2.0) < 0.05  # 6 : 3, as drawn
        assert abs(last["refBottom"] - last["reqTop"]) < 1  # refusals stacked on the requests
        assert last["fill"] and last["fill"] != "none"  # coloured by the stylesheet (the CSP allows no inline style)
        assert all(b["req"] == b["ref"] == 0 and b["requests"] == b["refusals"] == 0 for b in bars[:-1])
    title = await page.locator("#chart-24h g.hour").last.locator("title").text_content()
    assert title is not None and "6 requests, 3 refusals" in title

    # Another user's key has no usage page for this user.
    other = await make_user()
    theirs = await make_key(other.user_id)
    response = await page.goto(f"{server.base_url}/console/keys/{theirs.key.api_key}/usage")
    assert response is not None and response.status == 404


async def test_an_administrator_sees_any_keys_usage(server, make_user, make_key, page, db) -> None:  # type: ignore[no-untyped-def]
    admin, user = await make_user(admin=True), await make_user()
    created = await make_key(user.user_id)
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        for _ in range(2):
            assert http.post("/AP/GetUserInfo", headers=_signed(created.key.api_key, created.secret, user.user_id)).status_code == 200
    await sign_in(page, server.base_url, admin.username, admin.password)
    await page.goto(f"{server.base_url}/console/admin/keys")
    last_used = page.locator(f"tr[data-key='{created.key.api_key}'] td[data-label='Last used']")
    deadline = time.monotonic() + 8
    while "from 127.0.0.1" not in await last_used.inner_text() and time.monotonic() < deadline:
        await page.wait_for_timeout(300)
        await page.reload()
    assert "from 127.0.0.1" in await last_used.inner_text()
    await page.get_by_role("link", name=f"Usage of key {created.key.api_key}").click()
    totals = page.locator("#day-totals")
    deadline = time.monotonic() + 8
    while (await totals.inner_text()).strip() != "2 requests, 0 refusals" and time.monotonic() < deadline:
        await page.wait_for_timeout(300)
        await page.reload()
    assert (await totals.inner_text()).strip() == "2 requests, 0 refusals"
    assert (await _bars(page, "chart-24h"))[-1]["requests"] == 2
