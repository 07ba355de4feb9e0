"""The web console in a real Chromium (Playwright) against a real keygate server process.

Each main screen is saved as a screenshot under test-artifacts/console/.
"""

from __future__ import annotations

import json
import time

import httpx
import pyotp
import pytest
from console_support import SCREENSHOTS, browser, context, db, page, shot, sign_in  # noqa: F401  (fixtures)

import keygate
from keygate import KeygateAPIError

VECTOR = {
    "secret": "4b3e7c0a9f1d2e8b6a5c4d3e2f1a0b9c",
    "nonce": "2277045681",
    "user_id": "42",
    "api_key": "8d4f1a2b3c5e6f708192a3b4c5d6e7f8",
    "signature": "d49473077df88f71cbae6e0e59c560542afd01bc9feb2520dcf24fd33c1209fa",
}


async def dialog_is_open(page) -> bool:  # type: ignore[no-untyped-def]
    return bool(await page.locator("#credentials").evaluate("d => d.open && d.matches(':modal')"))


async def test_key_lifecycle_sign_in_create_export_authenticate_delete(server, make_user, page, db) -> None:  # type: ignore[no-untyped-def]
    user = await make_user(email="trader@example.com")
    base = f"{server.base_url}/console"

    # Sign in: a wrong password first, then the right one.
    await page.goto(f"{base}/login")
    await shot(page, "01-sign-in", db)
    await page.get_by_label("Username").fill(user.username)
    await page.get_by_label("Password").fill("not-the-password")
    await page.get_by_role("button", name="Sign in").click()
    await page.get_by_role("alert").filter(has_text="Wrong username or password.").wait_for()
    await page.get_by_label("Password").fill(user.password)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(f"{base}/")
    await page.get_by_text("You have no API keys yet").wait_for()

    # Create your API Key: a bad CIDR entry is named inline and nothing is created.
    await page.get_by_role("link", name="Create your API Key").click()
    await page.get_by_label("Label").fill("trading bot")
    await page.get_by_role("checkbox", name="Trading").check()
    await page.get_by_role("checkbox", name="Deposit").check()
    await page.get_by_label("IP allowlist").fill("127.0.0.1\n10.0.0.0/33, 2001:db8::/32")
    await shot(page, "02-create-key-form", db)
    await page.get_by_role("button", name="Create API Key").click()
    error = page.locator("#ip_allowlist-error")
    await error.wait_for()
    assert "10.0.0.0/33" in await error.inner_text()
    assert await page.get_by_label("IP allowlist").get_attribute("aria-invalid") == "true"
    assert await page.get_by_role("checkbox", name="Trading").is_checked()  # what was typed is kept
    await shot(page, "03-create-key-bad-cidr", db)
    await page.get_by_label("IP allowlist").fill("127.0.0.1\n10.0.0.0/8, 2001:db8::/32")
    await page.get_by_role("button", name="Create API Key").click()

    # The one-time dialog: modal, four values, cannot close before the box is ticked.
    dialog = page.get_by_role("dialog", name="Your new API key")
    await dialog.wait_for()
    assert await dialog_is_open(page)
    api_key = (await page.locator("#cred-api-key").inner_text()).strip()
    secret = (await page.locator("#cred-api-secret").inner_text()).strip()
    nonce = (await page.locator("#cred-nonce").inner_text()).strip()
    assert (await page.locator("#cred-user-id").inner_text()).strip() == str(user.user_id)
    assert len(api_key) == 32 and len(secret) == 64 and nonce.isdigit()
    assert "shown only once" in await dialog.inner_text()
    assert await dialog.get_by_role("button", name="Copy").count() == 4
    await shot(page, "04-credentials-dialog", db)
    close = dialog.get_by_role("button", name="Close")
    assert await close.is_disabled()
    await page.keyboard.press("Escape")
    assert await dialog_is_open(page), "Escape closed the dialog before the box was ticked"

    # Export to JSON: the download holds the values, and the SDK signs in with them.
    async with page.expect_download() as download_info:
        await dialog.get_by_role("button", name="Export to JSON").click()
    download = await download_info.value
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    exported_path = SCREENSHOTS / f"exported-{db}.json"
    await download.save_as(exported_path)
    exported = json.loads(exported_path.read_text())
    assert download.suggested_filename.endswith(".json")
    assert exported["APIKey"] == api_key and exported["APISecret"] == secret and exported["Nonce"] == nonce
    assert exported["UserId"] == user.user_id
    assert exported["Permissions"] == ["Trading", "Deposit"]
    assert exported["IpAllowlist"] == ["127.0.0.1", "10.0.0.0/8", "2001:db8::/32"]
    with keygate.Client(server.base_url, exported["UserId"], exported["APIKey"], exported["APISecret"]) as client:
        assert client.authenticate()["Authenticated"] is True
        assert client.call("GetUserInfo")["UserName"] == user.username

    # Tick, close: the key is in the list, and the secret is on no page any more.
    await dialog.get_by_label("I have stored my credentials securely").check()
    assert await close.is_enabled()
    await close.click()
    await page.wait_for_url(f"{base}/?done=closed")
    row = page.locator(f"tr[data-key='{api_key}']")
    await row.wait_for()
    row_text = await row.inner_text()
    assert "trading bot" in row_text and "Trading, Deposit" in row_text and "10.0.0.0/8" in row_text
    assert secret not in await page.content()
    await shot(page, "05-profile-with-key", db)
    await page.goto(f"{base}/keys/{api_key}/edit")
    assert secret not in await page.content()

    # Delete asks first, then the key stops working at once.
    await page.goto(f"{base}/")
    await row.get_by_role("link", name="Delete").click()
    await page.get_by_role("heading", name="Delete this API key?").wait_for()
    await shot(page, "06-delete-confirm", db)
    await page.get_by_role("button", name="Delete key").click()
    await page.get_by_role("status").filter(has_text="The API key was deleted").wait_for()
    assert await page.locator(f"tr[data-key='{api_key}']").count() == 0
    with keygate.Client(server.base_url, exported["UserId"], exported["APIKey"], exported["APISecret"]) as client:
        with pytest.raises(KeygateAPIError) as refused:
            client.authenticate()
    assert refused.value.status == 401

    # Sign out ends the console session.
    await page.get_by_role("button", name="Sign out").click()
    await page.get_by_role("status").filter(has_text="You have signed out.").wait_for()
    response = await page.goto(f"{base}/keys/new")
    assert response is not None and page.url.startswith(f"{base}/login")


async def test_edit_changes_rights_of_the_keys_live_sessions(server, make_user, make_key, page, db) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    created = await make_key(user.user_id, ["Trading"], label="old label")
    api_key = created.key.api_key
    client = keygate.Client(server.base_url, user.user_id, api_key, created.secret)
    token = client.authenticate()["SessionToken"]
    client.close()
    aptoken = {"aptoken": token}
    assert httpx.post(f"{server.base_url}/AP/GetUserInfo", headers=aptoken).status_code == 200

    await sign_in(page, server.base_url, user.username, user.password)
    await page.locator(f"tr[data-key='{api_key}']").get_by_role("link", name="Edit").click()
    assert await page.get_by_label("Label").input_value() == "old label"
    assert await page.get_by_role("checkbox", name="Trading").is_checked()
    await page.get_by_label("Label").fill("withdrawals")
    await page.get_by_role("checkbox", name="Trading").uncheck()
    await page.get_by_role("checkbox", name="Withdraw").check()
    await page.get_by_label("IP allowlist").fill("127.0.0.1")
    await page.get_by_role("button", name="Save changes").click()
    saved = page.locator("#saved")
    await saved.wait_for()
    assert "Apps already signed in with this key have the new permissions" in await saved.inner_text()
    await shot(page, "07-edit-key-saved", db)

    # The session made before the edit has the new rights at once; the key and secret sign in as before.
    r = httpx.post(f"{server.base_url}/AP/GetUserPermissions", headers=aptoken)
    assert r.status_code == 200 and r.json() == ["Withdraw"]
    with keygate.Client(server.base_url, user.user_id, api_key, created.secret) as again:
        again.authenticate()
        assert again.call("GetUserPermissions") == ["Withdraw"]
    await page.goto(f"{server.base_url}/console/")
    row_text = await page.locator(f"tr[data-key='{api_key}']").inner_text()
    assert "withdrawals" in row_text and "Withdraw" in row_text and "127.0.0.1" in row_text
    # "Last used" follows the key's use (written behind, within a few seconds).
    last_used = page.locator(f"tr[data-key='{api_key}'] td[data-label='Last used']")
    deadline = time.monotonic() + 6
    while (await last_used.inner_text()).strip() == "Never" and time.monotonic() < deadline:
        await page.wait_for_timeout(500)
        await page.reload()
    assert (await last_used.locator("time").inner_text()).strip().endswith("UTC")

    # A label-only edit keeps the key and its secret, and says so.
    await page.goto(f"{server.base_url}/console/keys/{api_key}/edit")
    await page.get_by_label("Label").fill("renamed")
    await page.get_by_role("button", name="Save changes").click()
    await saved.wait_for()
    assert "the key and its secret stay the same" in await saved.inner_text()
    assert httpx.post(f"{server.base_url}/AP/GetUserInfo", headers=aptoken).status_code == 200


async def test_totp_enrolment_then_sign_in_with_a_code(server, make_user, page, db) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    base = f"{server.base_url}/console"
    await sign_in(page, server.base_url, user.username, user.password)
    await page.get_by_role("link", name="Two-factor sign-in").click()
    await page.get_by_role("button", name="Set up two-factor sign-in").click()
    qr = page.get_by_role("img", name="QR code for your authenticator app")
    await qr.wait_for()
    assert await qr.evaluate("e => e.tagName.toLowerCase()") == "svg"
    secret = (await page.locator("#totp-secret").inner_text()).replace(" ", "")
    await shot(page, "08-totp-enrol", db)
    totp = pyotp.TOTP(secret)

    await page.get_by_label("6-digit code from the app").fill("000000" if totp.now() != "000000" else "111111")
    await page.get_by_role("button", name="Turn on two-factor sign-in").click()
    await page.get_by_role("alert").filter(has_text="wrong or expired").wait_for()
    await page.get_by_label("6-digit code from the app").fill(totp.now())
    await page.get_by_role("button", name="Turn on two-factor sign-in").click()
    await page.get_by_role("status").filter(has_text="Two-factor sign-in is on").wait_for()

    await page.get_by_role("button", name="Sign out").click()
    await page.get_by_label("Username").fill(user.username)
    await page.get_by_label("Password").fill(user.password)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(f"{base}/login/code")
    await shot(page, "09-sign-in-code", db)
    await page.get_by_label("6-digit code").fill("123456" if totp.now() != "123456" else "654321")
    await page.get_by_role("button", name="Verify").click()
    await page.get_by_role("alert").filter(has_text="wrong or has expired").wait_for()
    # The next period's code is valid now too (one step of drift), and is not the one used to enrol.
    await page.get_by_label("6-digit code").fill(totp.at(time.time() + 30))
    await page.get_by_role("button", name="Verify").click()
    await page.wait_for_url(f"{base}/")
    assert "On" in await page.locator(".facts").inner_text()

    # Remove it with a current code.
    await page.get_by_role("link", name="Two-factor sign-in").click()
    await page.get_by_label("Current 6-digit code").fill(totp.at(time.time() - 30))
    await page.get_by_role("button", name="Turn off two-factor sign-in").click()
    await page.get_by_role("status").filter(has_text="Two-factor sign-in is off").wait_for()


async def test_signature_helper_computes_the_vector_in_the_browser(server, page, db) -> None:  # type: ignore[no-untyped-def]
    await page.goto(f"{server.base_url}/console/signature")
    sent: list[str] = []
    page.on("request", lambda request: sent.append(request.url))
    await page.get_by_label("API secret").fill(VECTOR["secret"])
    await page.get_by_label("Nonce").fill(VECTOR["nonce"])
    await page.get_by_label("User ID").fill(VECTOR["user_id"])
    await page.get_by_label("API key").fill(VECTOR["api_key"])
    signature = page.locator("#sig-signature")
    await page.wait_for_function("s => document.getElementById('sig-signature').textContent === s", arg=VECTOR["signature"])
    assert await signature.inner_text() == VECTOR["signature"]
    headers = await page.locator("#sig-headers").inner_text()
    assert headers.splitlines() == [
        f"APIKey: {VECTOR['api_key']}", f"Signature: {VECTOR['signature']}",
        f"UserId: {VECTOR['user_id']}", f"Nonce: {VECTOR['nonce']}",
    ]
    curl = await page.locator("#sig-curl").inner_text()
    assert f"'{server.base_url}/AP/AuthenticateUser'" in curl
    for line in headers.splitlines():
        assert f"-H '{line}'" in curl
    assert VECTOR["secret"] not in curl
    await shot(page, "10-signature-helper", db)
    assert sent == [], f"the helper sent requests: {sent}"


async def test_signature_helper_curl_command_signs_in(server, make_user, make_key, page) -> None:  # type: ignore[no-untyped-def]
    """The headers the helper shows are accepted by the real AuthenticateUser."""
    user = await make_user()
    created = await make_key(user.user_id, ["Trading"])
    await sign_in(page, server.base_url, user.username, user.password)
    await page.goto(f"{server.base_url}/console/signature?api_key={created.key.api_key}")
    assert await page.get_by_label("User ID").input_value() == str(user.user_id)
    assert await page.get_by_label("API key").input_value() == created.key.api_key
    await page.get_by_label("API secret").fill(created.secret)
    await page.wait_for_function("() => document.getElementById('sig-headers').textContent.includes('Signature: ')")
    lines = (await page.locator("#sig-headers").inner_text()).splitlines()
    headers = dict(line.split(": ", 1) for line in lines)
    reply = httpx.post(f"{server.base_url}/AP/AuthenticateUser", headers=headers)
    assert reply.status_code == 200 and reply.json()["Authenticated"] is True


async def test_admin_pages(server, make_user, make_key, page, db) -> None:  # type: ignore[no-untyped-def]
    admin = await make_user(admin=True)
    victim = await make_user()
    created = await make_key(victim.user_id, ["Trading"], label="victim bot")
    page.on("dialog", lambda d: d.accept())
    await sign_in(page, server.base_url, admin.username, admin.password)

    # Users: create one, lock, unlock, reset password, sign out everywhere.
    await page.get_by_role("link", name="Users").click()
    new_name = f"ops{int(time.time() * 1000) % 10**9}"
    await page.get_by_label("Username").fill(new_name)
    await page.get_by_label("Email").fill("ops@example.com")
    await page.get_by_role("button", name="Create user").click()
    await page.get_by_role("status").filter(has_text=f"User {new_name}").wait_for()
    generated = (await page.locator("#revealed-password").inner_text()).strip()
    assert len(generated) >= 10
    await page.get_by_role("button", name=f"Lock {victim.username}").click()
    await page.get_by_role("status").filter(has_text=f"User {victim.username} is locked").wait_for()
    assert "Locked" in await page.locator(f"tr[data-user='{victim.username}']").inner_text()
    await page.get_by_role("button", name=f"Unlock {victim.username}").click()
    await page.get_by_role("status").filter(has_text=f"User {victim.username} is unlocked").wait_for()
    await shot(page, "11-admin-users", db)
    await page.get_by_role("button", name=f"Reset password of {new_name}").click()
    await page.get_by_role("status").filter(has_text=f"The password of {new_name} was reset").wait_for()
    reset = (await page.locator("#revealed-password").inner_text()).strip()
    assert reset != generated

    # The new user signs in with the reset password (in a second browser context).
    other = await page.context.browser.new_context()
    other_page = await other.new_page()
    await sign_in(other_page, server.base_url, new_name, reset)
    await other.close()

    # Sessions: the victim's key session is listed and can be ended. (Locking ended the earlier ones.)
    with keygate.Client(server.base_url, victim.user_id, created.key.api_key, created.secret) as client:
        token = client.authenticate()["SessionToken"]
    await page.get_by_role("link", name="Sessions").click()
    session_row = page.locator(f"tr[data-api-key='{created.key.api_key}']")
    await session_row.wait_for()
    await shot(page, "12-admin-sessions", db)
    await session_row.get_by_role("button", name="End").click()
    await page.get_by_role("status").filter(has_text="was ended").wait_for()
    assert await page.locator(f"tr[data-api-key='{created.key.api_key}']").count() == 0
    assert httpx.post(f"{server.base_url}/AP/GetUserInfo", headers={"aptoken": token}).status_code == 401

    # Every user's keys: revoke the victim's.
    await page.get_by_role("link", name="All keys").click()
    key_row = page.locator(f"tr[data-key='{created.key.api_key}']")
    await key_row.wait_for()
    await shot(page, "13-admin-keys", db)
    await key_row.get_by_role("button", name="Revoke").click()
    await page.get_by_role("status").filter(has_text="was revoked").wait_for()
    with keygate.Client(server.base_url, victim.user_id, created.key.api_key, created.secret) as client:
        with pytest.raises(KeygateAPIError):
            client.authenticate()

    # Audit trail, filtered to the victim's key changes.
    await page.get_by_role("link", name="Audit trail").click()
    await page.get_by_label("Action").fill("key.delete")
    await page.get_by_label("User ID").fill(str(victim.user_id))
    await page.get_by_role("button", name="Filter").click()
    await page.get_by_role("status").filter(has_text="1 event,").wait_for()
    assert created.key.api_key in await page.locator("table.audit").inner_text()
    await page.get_by_label("Action").fill("")
    await page.get_by_label("Outcome").select_option("success")
    await page.get_by_role("button", name="Filter").click()
    await page.locator("table.audit").wait_for()
    outcomes = await page.locator("table.audit tbody td[data-label='Outcome']").all_inner_texts()
    assert outcomes and set(outcomes) == {"success"}
    await shot(page, "14-admin-audit", db)


async def test_admin_pages_are_refused_to_a_normal_user(server, make_user, page, db) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    await sign_in(page, server.base_url, user.username, user.password)
    assert await page.get_by_role("link", name="Users").count() == 0
    for path in ("/admin/users", "/admin/keys", "/admin/sessions", "/admin/audit"):
        response = await page.goto(f"{server.base_url}/console{path}")
        assert response is not None and response.status == 403, path
        await page.get_by_role("heading", name="Administrators only").wait_for()
    await shot(page, "15-admin-refused", db)


async def test_narrow_screen(server, make_user, make_key, browser, db) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    await make_key(user.user_id, ["Trading", "Withdraw"], ["203.0.113.0/24"], label="phone")
    ctx = await browser.new_context(viewport={"width": 380, "height": 800}, is_mobile=True)
    try:
        page = await ctx.new_page()
        await sign_in(page, server.base_url, user.username, user.password)
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= 380, f"the profile scrolls sideways on a phone ({width}px)"
        await shot(page, "16-profile-narrow", db)
    finally:
        await ctx.close()


async def _tab_to(page, name: str, limit: int = 40) -> None:  # type: ignore[no-untyped-def]
    """Press Tab until the focused element's accessible text is ``name``."""
    for _ in range(limit):
        await page.keyboard.press("Tab")
        focused = await page.evaluate(
            "() => { const e = document.activeElement; return (e.labels && e.labels[0] ? e.labels[0].textContent : e.textContent || '').trim(); }")
        if focused.startswith(name):
            return
    raise AssertionError(f"could not reach {name!r} with the Tab key")


async def test_keyboard_only_sign_in_create_and_close(server, make_user, page) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    await page.goto(f"{server.base_url}/console/login")
    # The username field takes the focus on arrival (autofocus, which Chromium applies just after load).
    await page.wait_for_function("() => document.activeElement && document.activeElement.id === 'username'", timeout=5000)
    await page.keyboard.type(user.username)
    await page.keyboard.press("Tab")
    await page.keyboard.type(user.password)
    await page.keyboard.press("Enter")
    await page.wait_for_url(f"{server.base_url}/console/")

    await _tab_to(page, "Create your API Key")
    await page.keyboard.press("Enter")
    await page.wait_for_url(f"{server.base_url}/console/keys/new")
    await _tab_to(page, "Label")
    await page.keyboard.type("keyboard")
    await _tab_to(page, "Trading")
    await page.keyboard.press("Space")
    await _tab_to(page, "Create API Key")
    await page.keyboard.press("Enter")

    dialog = page.get_by_role("dialog", name="Your new API key")
    await dialog.wait_for()
    await _tab_to(page, "I have stored my credentials securely")
    await page.keyboard.press("Space")
    await _tab_to(page, "Close")
    await page.keyboard.press("Enter")
    await page.wait_for_url(f"{server.base_url}/console/?done=closed")
    assert "keyboard" in await page.locator("table.keys").inner_text()
