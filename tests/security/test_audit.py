"""The audit trail: every authentication and change is recorded, with no secret or token in it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from abuse_helpers import client_for, random_ip, signed
from sqlalchemy import select

from keygate.service.principal import OPERATOR
from keygate.store.tables import audit_events
from support import settings_env


async def test_authentications_and_changes_are_recorded_without_secrets(kg, settings, make_user, make_key):
    user = await make_user()
    admin = await make_user(admin=True)
    created = await make_key(user.user_id, ["Trading"])
    ip = random_ip()
    async with client_for(kg, ip) as client:
        token = (await client.post("/AP/AuthenticateUser", headers=signed(created, user.user_id, "1"))).json()["SessionToken"]
        await client.post("/AP/AuthenticateUser", headers={**signed(created, user.user_id, "1"), "Signature": "1" * 64})
        await client.post("/AP/AuthenticateUser", json={"UserName": user.username, "Password": "wrong-password-x"})
        password = (await client.post("/AP/AuthenticateUser", json={"UserName": user.username, "Password": user.password})).json()["SessionToken"]
        await client.post("/AP/UpdateUserAPIKey", headers={"aptoken": password}, json={"APIKey": created.key.api_key, "Label": "renamed"})
        rotated = (await client.post("/AP/RotateUserAPIKey", headers={"aptoken": password}, json={"APIKey": created.key.api_key})).json()
        await client.post("/AP/RemoveUserAPIKey", headers={"aptoken": password}, json={"APIKey": created.key.api_key})
        admin_token = (await client.post("/AP/AuthenticateUser", json={"UserName": admin.username, "Password": admin.password})).json()["SessionToken"]
        await client.post("/AP/LockUser", headers={"aptoken": admin_token}, json={"UserId": user.user_id})
        await client.post("/AP/UnlockUser", headers={"aptoken": admin_token}, json={"UserId": user.user_id})

    events = await kg.audit.query(OPERATOR, user_id=user.user_id, limit=1000)
    seen = {(e.action, e.outcome, e.reason) for e in events}
    assert ("auth.key", "success", None) in seen
    assert ("auth.key", "failure", "signature mismatch") in seen
    assert ("auth.password", "failure", "wrong password") in seen
    assert {"key.create", "key.update", "key.rotate", "key.delete", "user.lock", "user.unlock"} <= {e.action for e in events}
    assert all(e.client_ip == ip for e in events if e.action.startswith("auth."))
    lock = next(e for e in events if e.action == "user.lock")
    assert lock.actor_user_id == admin.user_id and lock.subject_user_id == user.user_id

    async with kg.engine.connect() as conn:
        dump = json.dumps([list(map(str, r)) for r in (await conn.execute(select(audit_events))).all()])
    for secret in (created.secret, rotated["APISecret"], token, password, admin_token, user.password):
        assert secret not in dump


async def test_admins_query_the_trail_with_filters_and_others_cannot(kg, make_user, make_key):
    user = await make_user()
    admin = await make_user(admin=True)
    created = await make_key(user.user_id)
    async with client_for(kg, random_ip()) as client:
        await client.post("/AP/AuthenticateUser", headers={**signed(created, user.user_id, "1"), "Signature": "2" * 64})
        mine = (await client.post("/AP/AuthenticateUser", json={"UserName": user.username, "Password": user.password})).json()["SessionToken"]
        refused = await client.post("/AP/GetAuditLog", headers={"aptoken": mine})
        assert refused.status_code == 403 and refused.json()["errorcode"] == 20
        admin_token = (await client.post("/AP/AuthenticateUser", json={"UserName": admin.username, "Password": admin.password})).json()["SessionToken"]
        r = await client.get("/AP/GetAuditLog", headers={"aptoken": admin_token},
                             params={"Action": "auth.key", "Outcome": "failure", "APIKey": created.key.api_key})
        assert r.status_code == 200
        rows = r.json()
        assert len(rows) == 1 and rows[0]["Reason"] == "signature mismatch" and rows[0]["APIKey"] == created.key.api_key
        bad = await client.get("/AP/GetAuditLog", headers={"aptoken": admin_token}, params={"Since": "yesterday"})
        assert bad.status_code == 400 and "ISO 8601" in bad.json()["errormsg"]
        bad = await client.get("/AP/GetAuditLog", headers={"aptoken": admin_token}, params={"Limit": "0"})
        assert bad.status_code == 400


async def test_the_cli_exports_json_lines(kg, settings, make_user, make_key):
    user = await make_user()
    created = await make_key(user.user_id)
    async with client_for(kg, random_ip()) as client:
        await client.post("/AP/AuthenticateUser", headers=signed(created, user.user_id, "1"))
    await kg.flush()  # the audit rows, and the session's write, settled before the CLI process runs
    env = {**os.environ, **settings_env(settings)}
    out = subprocess.run([sys.executable, "-m", "keygate", "audit", "--user", user.username, "--limit", "50"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert {"key.create", "auth.key"} <= {line["Action"] for line in lines}
    assert all(set(line) >= {"At", "Action", "Outcome", "ClientIp", "APIKey"} for line in lines)
    assert created.secret not in out.stdout


async def test_signed_requests_are_tallied_per_key_and_address(kg, make_user, make_key):
    user = await make_user()
    created = await make_key(user.user_id)
    ip = random_ip()
    async with client_for(kg, ip) as client:
        for nonce in ("1", "2", "3"):
            assert (await client.get("/AP/GetUserInfo", headers=signed(created, user.user_id, nonce))).status_code == 200
        await client.get("/AP/GetUserInfo", headers={**signed(created, user.user_id, "4"), "Signature": "3" * 64})
    events = await kg.audit.query(OPERATOR, api_key=created.key.api_key, action="auth.signed_request")
    successes = [e for e in events if e.outcome == "success"]
    failures = [e for e in events if e.outcome == "failure"]
    assert len(successes) == 1 and successes[0].detail.startswith("count=3; last=")
    assert successes[0].client_ip == ip and successes[0].subject_user_id == user.user_id
    assert len(failures) == 1 and failures[0].reason == "signature mismatch"
