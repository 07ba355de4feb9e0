"""An Ed25519 key made in the browser: Chromium's WebCrypto makes the pair, the console sends only the
public key, the private key is downloaded once (JSON and PKCS#8 PEM) behind an "I stored it" box, and
the downloaded key signs in from Python. A real keygate server process and a real Chromium."""

from __future__ import annotations

import base64
import json
from urllib.parse import parse_qs

import httpx
from console_support import SCREENSHOTS, browser, context, db, page, shot, sign_in  # noqa: F401  (fixtures)
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import keygate
from keygate.domain.key_material import fingerprint
from keygate.domain.signature import signing_message


async def test_an_ed25519_key_made_in_the_browser_signs_in_and_the_server_never_saw_the_private_key(
        server, make_user, page, db) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    base = f"{server.base_url}/console"
    await sign_in(page, server.base_url, user.username, user.password)
    await page.goto(f"{base}/keys/new")
    await page.get_by_label("Label").fill("ed bot")
    await page.get_by_role("checkbox", name="Trading").check()
    assert not await page.locator("#generate-keypair").is_visible()  # hmac is the default: no key fields
    await page.get_by_role("radio", name="Ed25519").check()
    await page.get_by_role("button", name="Make a key pair in this browser").click()
    await page.locator("#private-key-export").wait_for()
    public_b64 = await page.locator("#public_key").input_value()
    raw_public = base64.b64decode(public_b64)
    assert len(raw_public) == 32
    submit = page.locator("#submit-key")
    assert await submit.is_disabled()  # not before the private key is stored

    async with page.expect_download() as pem_info:
        await page.get_by_role("button", name="Download private key (PKCS#8 PEM)").click()
    pem_path = SCREENSHOTS / f"ed25519-private-{db}.pem"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await (await pem_info.value).save_as(pem_path)
    async with page.expect_download() as json_info:
        await page.get_by_role("button", name="Download private key (JSON)").click()
    json_path = SCREENSHOTS / f"ed25519-private-{db}.json"
    await (await json_info.value).save_as(json_path)
    private = serialization.load_pem_private_key(pem_path.read_bytes(), password=None)
    assert isinstance(private, Ed25519PrivateKey)
    assert private.public_key().public_bytes_raw() == raw_public
    exported = json.loads(json_path.read_text())
    assert exported["PublicKey"] == public_b64 and exported["PrivateKeyJwk"]["crv"] == "Ed25519"
    await shot(page, "ed25519-01-key-pair-made", db)

    await page.get_by_label("I have stored my private key securely").check()
    assert await submit.is_enabled()
    async with page.expect_request(lambda r: r.method == "POST" and r.url.endswith("/console/keys")) as sent:
        await submit.click()
    request = await sent.value
    fields = parse_qs(request.post_data or "")
    # The request carries the public key and nothing of the private one.
    assert fields["key_type"] == ["ed25519"] and fields["public_key"] == [public_b64]
    body = request.post_data or ""
    seed = private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    for secret_form in (exported["PrivateKeyJwk"]["d"], base64.b64encode(seed).decode(), seed.hex(), "PRIVATE"):
        assert secret_form not in body and secret_form.replace("+", "%2B").replace("/", "%2F") not in body

    dialog = page.get_by_role("dialog", name="Your new API key")
    await dialog.wait_for()
    api_key = (await page.locator("#cred-api-key").inner_text()).strip()
    assert (await page.locator("#cred-public-key").inner_text()).strip() == fingerprint(raw_public)
    assert await page.locator("#cred-api-secret").count() == 0
    await shot(page, "ed25519-02-created", db)
    await dialog.get_by_label("I have stored my credentials securely").check()
    await dialog.get_by_role("button", name="Close").click()
    await page.wait_for_url(f"{base}/?done=closed")

    # The exported private key signs in, from Python: the PEM by hand, the JSON through the SDK.
    nonce = "1700000000777"
    signature = base64.b64encode(private.sign(signing_message(nonce, user.user_id, api_key))).decode()
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        r = await http.post("/AP/AuthenticateUser", headers={"APIKey": api_key, "UserId": str(user.user_id), "Nonce": nonce,
                                                             "Signature": signature})
        assert r.status_code == 200 and r.json()["Authenticated"] is True, r.text
    with keygate.Client(server.base_url, user.user_id, api_key, private_key=json_path.read_text()) as client:
        assert client.call("GetUserPermissions") == ["Trading"]


async def test_a_pasted_private_key_is_refused_and_not_shown_again(server, make_user, page, db) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    await sign_in(page, server.base_url, user.username, user.password)
    await page.goto(f"{server.base_url}/console/keys/new")
    await page.get_by_role("radio", name="Ed25519").check()
    pkcs8 = Ed25519PrivateKey.generate().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()).decode()
    await page.get_by_label("Ed25519 public key").fill(pkcs8)
    await page.get_by_role("button", name="Create API Key").click()
    error = page.locator("#public_key-error")
    await error.wait_for()
    assert "private key" in await error.inner_text()
    assert pkcs8.splitlines()[1] not in await page.content()
    assert await page.get_by_role("radio", name="Ed25519").is_checked()
    await shot(page, "ed25519-03-private-key-refused", db)
