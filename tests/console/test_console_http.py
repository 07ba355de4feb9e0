"""The console over plain HTTP: CSRF refusals, double submits, headers, cookies, admin refusals.

These are the checks a browser would not let us make (forged or replayed forms), run against the real
server process; one uses the app in-process to see the cookie served over https.
"""

from __future__ import annotations

import re

import httpx
from console_support import ConsoleHttp, console_http  # noqa: F401  (fixture)

from keygate.api import create_app
from keygate.service.principal import OPERATOR

ADMIN_GETS = ["/admin/users", "/admin/keys", "/admin/sessions", "/admin/audit"]
ADMIN_POSTS = ["/admin/users", "/admin/users/1/lock", "/admin/users/1/password", "/admin/users/1/signout",
               "/admin/keys/" + "0" * 32 + "/revoke", "/admin/sessions/end"]
EXPIRED_FORM = "The form could not be verified"


async def _key_count(kg, user_id: int) -> int:  # type: ignore[no-untyped-def]
    await kg.users.require(user_id)
    return len(await kg.keys.list(OPERATOR, user_id))


def _create_form(http: ConsoleHttp, **overrides: object) -> dict[str, object]:
    page = http.get("/keys/new")
    data: dict[str, object] = {"csrf_token": http.csrf_of(page.text), "form_id": http.form_id_of(page.text),
                               "label": "bot", "permissions": ["Trading"], "ip_allowlist": ""}
    data.update(overrides)
    return data


async def test_forms_without_or_with_a_wrong_csrf_token_are_refused(console_http, make_user, kg) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    console_http.sign_in(user.username, user.password)

    for token in (None, "", "0" * 64, "not-a-token"):
        data = _create_form(console_http)
        if token is None:
            del data["csrf_token"]
        else:
            data["csrf_token"] = token
        r = console_http.post("/keys", data)
        assert r.status_code == 403, token
        assert EXPIRED_FORM in r.text and "Nothing was changed" in r.text
        assert r.headers["content-type"].startswith("text/html")
    assert await _key_count(kg, user.user_id) == 0

    # A token from another user's session does not work in this one.
    other_user = await make_user()
    other = ConsoleHttp(console_http.base.rsplit("/console", 1)[0])
    try:
        other.sign_in(other_user.username, other_user.password)
        foreign = other.csrf_of(other.get("/keys/new").text)
    finally:
        other.close()
    assert console_http.post("/keys", _create_form(console_http, csrf_token=foreign)).status_code == 403
    assert await _key_count(kg, user.user_id) == 0

    # Sign-out is a state change too.
    assert console_http.post("/logout", {}).status_code == 403
    assert console_http.get("/").status_code == 200 and "Your profile" in console_http.get("/").text

    # With the right token the same request works.
    assert console_http.post("/keys", _create_form(console_http)).status_code == 201
    assert await _key_count(kg, user.user_id) == 1


async def test_login_form_needs_its_own_token(console_http, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    r = console_http.post("/login", {"username": user.username, "password": user.password})
    assert r.status_code == 403 and "sign-in page had expired" in r.text
    assert "kg_session" not in console_http.http.cookies
    # The reloaded page carries a fresh token, and signing in with it works.
    r = console_http.post("/login", {"csrf_token": console_http.csrf_of(r.text), "username": user.username,
                                     "password": user.password})
    assert r.status_code == 200 and "Your profile" in r.text


async def test_double_submit_creates_one_key(console_http, make_user, kg) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    console_http.sign_in(user.username, user.password)
    data = _create_form(console_http)
    first = console_http.post("/keys", data)
    assert first.status_code == 201
    second = console_http.post("/keys", data)
    assert second.status_code == 409 and "already submitted" in second.text
    secret = re.search(r'id="cred-api-secret">([0-9a-f]{64})<', first.text)
    assert secret and secret.group(1) not in second.text
    assert await _key_count(kg, user.user_id) == 1


async def test_bad_allowlist_entries_are_named_and_nothing_is_created(console_http, make_user, kg) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    console_http.sign_in(user.username, user.password)
    r = console_http.post("/keys", _create_form(console_http, ip_allowlist="192.0.2.1, 300.1.1.1\n10.0.0.0/8 fe80::/129"))
    assert r.status_code == 400
    message = re.search(r'id="ip_allowlist-error">([^<]*)<', r.text)
    assert message and "300.1.1.1" in message.group(1) and "fe80::/129" in message.group(1)
    assert "192.0.2.1" not in message.group(1)
    assert await _key_count(kg, user.user_id) == 0


async def test_a_refusal_from_the_service_is_shown_at_its_field(console_http, make_user, kg) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    console_http.sign_in(user.username, user.password)
    r = console_http.post("/keys", _create_form(console_http, label="x" * 101))
    assert r.status_code == 400
    message = re.search(r'id="label-error">([^<]*)<', r.text)
    assert message and "longer than 100 characters" in message.group(1)
    assert await _key_count(kg, user.user_id) == 0


async def test_the_secret_is_in_exactly_one_response(console_http, make_user, server) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    console_http.sign_in(user.username, user.password)
    created = console_http.post("/keys", _create_form(console_http))
    assert created.status_code == 201 and created.headers["cache-control"] == "no-store"
    api_key = re.search(r'id="cred-api-key">([0-9a-f]{32})<', created.text).group(1)  # type: ignore[union-attr]
    secret = re.search(r'id="cred-api-secret">([0-9a-f]{64})<', created.text).group(1)  # type: ignore[union-attr]
    assert api_key in created.text
    for path in ("/", f"/keys/{api_key}/edit", f"/keys/{api_key}/delete", "/signature", f"/signature?api_key={api_key}",
                 "/two-factor", "/keys/closed?stored=yes"):
        page = console_http.get(path)
        assert page.status_code == 200, path
        assert secret not in page.text, path


async def test_security_headers_and_no_inline_script(console_http, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    login = console_http.get("/login")
    csp = login.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert login.headers["x-frame-options"] == "DENY"
    assert login.headers["cache-control"] == "no-store"
    console_http.sign_in(user.username, user.password)
    pages = [console_http.get(p) for p in ("/", "/keys/new", "/two-factor", "/signature")]
    pages.append(console_http.post("/keys", _create_form(console_http)))
    for page in pages:
        assert page.headers["content-security-policy"] == csp
        # Scripts come from files; the only inline <script> is a JSON data block, which never runs.
        for tag in re.findall(r"<script[^>]*>", page.text):
            assert "src=" in tag or 'type="application/json"' in tag, tag
        assert not re.search(r"\son[a-z]+=", page.text), "inline event handler"
    static = console_http.get("/static/console.js")
    assert static.status_code == 200 and "javascript" in static.headers["content-type"]


async def test_session_cookie_flags(server, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    with httpx.Client(base_url=f"{server.base_url}/console") as http:
        page = http.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        r = http.post("/login", data={"csrf_token": token, "username": user.username, "password": user.password})
    assert r.status_code == 303
    cookie = next(v for k, v in r.headers.multi_items() if k == "set-cookie" and v.startswith("kg_session="))
    flags = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/console"} <= flags
    assert "secure" not in flags  # plain http here: a Secure cookie would never come back


async def test_cookie_is_secure_over_https(kg, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    transport = httpx.ASGITransport(app=create_app(keygate=kg))
    async with httpx.AsyncClient(transport=transport, base_url="https://keygate.test/console") as http:
        page = await http.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        r = await http.post("/login", data={"csrf_token": token, "username": user.username, "password": user.password})
    cookie = next(v for k, v in r.headers.multi_items() if k == "set-cookie" and v.startswith("kg_session="))
    assert "secure" in cookie.lower() and "httponly" in cookie.lower()


async def test_admin_pages_refused_to_a_normal_user(console_http, make_user, kg) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    console_http.sign_in(user.username, user.password)
    csrf = console_http.csrf_of(console_http.get("/").text)
    for path in ADMIN_GETS:
        r = console_http.get(path)
        assert r.status_code == 403 and "Administrators only" in r.text, path
    for path in ADMIN_POSTS:
        r = console_http.post(path, {"csrf_token": csrf, "action": "lock", "user_id": "1", "session": "x"})
        assert r.status_code == 403 and "Administrators only" in r.text, path
    first = await kg.users.get(1)
    assert first is None or not first.locked


async def test_signed_out_visitors(console_http) -> None:  # type: ignore[no-untyped-def]
    r = console_http.http.get(console_http.base + "/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/console/login"
    r = console_http.http.get(console_http.base + "/admin/users", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/console/login?next=%2Fadmin%2Fusers"
    r = console_http.post("/keys", {"label": "x"})
    assert r.status_code == 401 and "Your session has ended" in r.text
    assert console_http.get("/no-such-page").status_code == 404


async def test_sign_in_returns_to_the_page_asked_for_and_nowhere_else(console_http, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    asked = console_http.get("/keys/new")  # signed out: the sign-in page, remembering where we were going
    assert str(asked.url).endswith("/console/login?next=%2Fkeys%2Fnew")
    r = console_http.post("/login", {"csrf_token": console_http.csrf_of(asked.text), "next": "/keys/new",
                                     "username": user.username, "password": user.password})
    assert str(r.url).endswith("/console/keys/new") and "Create your API Key" in r.text
    console_http.post("/logout", {"csrf_token": console_http.csrf_of(r.text)})
    for target in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        page = console_http.get("/login")
        r = console_http.post("/login", {"csrf_token": console_http.csrf_of(page.text), "next": target,
                                         "username": user.username, "password": user.password})
        assert str(r.url) == console_http.base + "/", target
        console_http.post("/logout", {"csrf_token": console_http.csrf_of(r.text)})


async def test_expired_session_page_after_sign_out(console_http, make_user) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    console_http.sign_in(user.username, user.password)
    data = _create_form(console_http)
    old_cookie = console_http.http.cookies.get("kg_session")
    signed_out = console_http.post("/logout", {"csrf_token": data["csrf_token"]})
    assert "You have signed out." in signed_out.text
    console_http.http.cookies.set("kg_session", old_cookie or "", path="/console")
    r = console_http.post("/keys", data)
    assert r.status_code == 401 and "Your session has ended" in r.text and "nothing was changed" in r.text


async def test_locked_account_message(console_http, make_user, kg) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    await kg.users.set_locked(OPERATOR, user.user_id, True)
    page = console_http.get("/login")
    r = console_http.post("/login", {"csrf_token": console_http.csrf_of(page.text), "username": user.username,
                                     "password": user.password})
    assert r.status_code == 401 and "This account is locked" in r.text


async def test_replay_mode_and_expiry_are_chosen_at_creation_and_shown(console_http, make_user, kg) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    console_http.sign_in(user.username, user.password)
    form = console_http.get("/keys/new").text
    assert 'name="replay_mode" value="compatible" checked' in form, "the operator's default is preselected"
    r = console_http.post("/keys", _create_form(console_http, replay_mode="unique", expires_at="2099-01-31T12:00"))
    assert r.status_code == 201
    assert "nonces: unique" in r.text and "expires" in r.text
    await kg.users.require(user.user_id)
    (key,) = await kg.keys.list(OPERATOR, user.user_id)
    assert key.replay_mode.value == "unique" and key.expires_at is not None and key.expires_at.year == 2099
    edit = console_http.get(f"/keys/{key.api_key}/edit").text
    assert 'value="unique" checked' in edit and 'value="2099-01-31T12:00"' in edit
    bad = console_http.post("/keys", _create_form(console_http, replay_mode="sometimes", expires_at="soon"))
    assert bad.status_code == 400
    assert re.search(r'id="replay_mode-error">[^<]*compatible, increasing, unique', bad.text)
    assert re.search(r'id="expires_at-error">[^<]*date and time', bad.text)
    past = console_http.post("/keys", _create_form(console_http, expires_at="2001-01-01T00:00"))
    assert past.status_code == 400 and re.search(r'id="expires_at-error">[^<]*future', past.text)
    assert await _key_count(kg, user.user_id) == 1


async def test_a_key_is_made_or_switched_to_signature_v2_only_in_the_forms(console_http, make_user, kg) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    console_http.sign_in(user.username, user.password)
    form = console_http.get("/keys/new").text
    assert 'name="signatures" value="apex" checked' in form, "the operator's default (APEX and v2) is preselected"
    r = console_http.post("/keys", _create_form(console_http, signatures="v2"))
    assert r.status_code == 201 and "Signature v2 only" in r.text
    (key,) = await kg.keys.list(OPERATOR, user.user_id)
    assert key.requires_v2
    edit = console_http.get(f"/keys/{key.api_key}/edit")
    assert 'name="signatures" value="v2" checked' in edit.text and "switching ends the key's sessions" in edit.text
    data = {"csrf_token": console_http.csrf_of(edit.text), "label": "bot", "permissions": ["Trading"], "ip_allowlist": "",
            "signatures": "apex"}
    saved = console_http.post(f"/keys/{key.api_key}/edit", data)
    assert saved.status_code in (200, 303), saved.text
    (key,) = await kg.keys.list(OPERATOR, user.user_id)
    assert not key.requires_v2
    bad = console_http.post("/keys", _create_form(console_http, signatures="sometimes"))
    assert bad.status_code == 400 and re.search(r'id="signatures-error">[^<]*Signature v2 only', bad.text)
    assert await _key_count(kg, user.user_id) == 1
