"""Fill a database with the keygate of an older commit; print what a later version must still honour.

Run as ``python seed_old_database.py`` with ``PYTHONPATH`` at the old ``src/`` and the ``KEYGATE_*``
settings in the environment (tests/store/test_upgrade_keeps_data.py does both). It goes through the old
service layer only, so it keeps working against the commit it was written for (7caa2ba). Prints one
JSON object: users (passwords, TOTP secrets), keys (secrets), session tokens.
"""

from __future__ import annotations

import asyncio
import json
import time

import pyotp

from keygate.config import Settings
from keygate.domain.errors import KeygateError
from keygate.domain.iprules import IpAllowlist
from keygate.domain.permissions import parse_permissions
from keygate.domain.signature import compute_signature
from keygate.service import Keygate
from keygate.service.auth import KeyCredentials
from keygate.service.principal import operator_acting_as

CLIENT_IP = "127.0.0.1"  # sessions are bound to the address they were issued to: the test's client


def _nonce() -> str:
    time.sleep(0.002)
    return str(time.time_ns() // 1_000_000)


async def main() -> dict[str, object]:
    kg = Keygate(Settings.from_env())
    await kg.start(bootstrap_admin=False)
    out: dict[str, object] = {"users": {}, "keys": [], "sessions": []}
    try:
        people = {}
        for name, admin, email in (("oldadmin", True, "admin@example.com"), ("alice", False, "alice@example.com"),
                                   ("bob", False, ""), ("carol", False, "carol@example.com")):
            password = f"{name} has a long password 1"
            user = await kg.users.create(name, password, email, is_admin=admin)
            people[name] = user
            out["users"][name] = {"user_id": user.user_id, "password": password, "totp_secret": None}  # type: ignore[index]

        # bob signs in with a password and a TOTP code.
        bob = people["bob"]
        totp_secret, _uri = await kg.users.begin_totp(bob.user_id)
        await kg.users.confirm_totp(bob.user_id, pyotp.TOTP(totp_secret).now())
        out["users"]["bob"]["totp_secret"] = totp_secret  # type: ignore[index]

        async def key(owner: str, permissions: list[str], ips: list[str], label: str) -> dict[str, object]:
            user = await kg.users.require(people[owner].user_id)
            made = await kg.keys.create(operator_acting_as(user), user.user_id, parse_permissions(permissions),
                                        IpAllowlist.parse(ips), label)
            revealed = made.reveal()
            record = {"user_id": user.user_id, "api_key": revealed["APIKey"], "secret": revealed["APISecret"], "label": label}
            out["keys"].append(record)  # type: ignore[attr-defined]
            return record

        trading = await key("alice", ["Trading"], ["127.0.0.1/32"], "desk")
        await key("alice", [], [], "read only")
        await key("bob", ["Trading", "Withdraw"], [], "bob's bot")
        await key("carol", ["Deposit"], [], "carol")

        # A key rotated with a grace period: both the new secret and, for now, the old one open it.
        rotated = await key("alice", ["Trading"], [], "rotated")
        alice = await kg.users.require(people["alice"].user_id)
        fresh = (await kg.keys.rotate_secret(operator_acting_as(alice), alice.user_id, str(rotated["api_key"]),
                                             grace_seconds=86400)).reveal()
        rotated["previous_secret"], rotated["secret"] = rotated["secret"], fresh["APISecret"]

        # Sessions: a key session, a password session, a password + TOTP session.
        nonce = _nonce()
        grant = await kg.auth.authenticate_key(KeyCredentials(
            str(trading["api_key"]), compute_signature(str(trading["secret"]), nonce, alice.user_id, str(trading["api_key"])),
            alice.user_id, nonce), CLIENT_IP)
        out["sessions"].append({"user_id": alice.user_id, "token": grant.token, "kind": "key"})  # type: ignore[attr-defined]
        admin_grant = await kg.auth.authenticate_password("oldadmin", out["users"]["oldadmin"]["password"], CLIENT_IP)  # type: ignore[index]
        out["sessions"].append({"user_id": people["oldadmin"].user_id, "token": admin_grant.token, "kind": "password"})  # type: ignore[attr-defined]
        pending = await kg.auth.authenticate_password("bob", out["users"]["bob"]["password"], CLIENT_IP)  # type: ignore[index]
        bob_grant = await kg.auth.complete_2fa(pending.token, pyotp.TOTP(totp_secret).now(), CLIENT_IP)
        out["sessions"].append({"user_id": bob.user_id, "token": bob_grant.token, "kind": "2fa"})  # type: ignore[attr-defined]

        # Refusals are audited too; carol is locked by the administrator.
        try:
            await kg.auth.authenticate_password("alice", "not alice's password", CLIENT_IP)
        except KeygateError:
            pass
        admin = await kg.users.require(people["oldadmin"].user_id)
        await kg.users.set_locked(people["carol"].user_id, True, actor=operator_acting_as(admin), reason="left the desk")
    finally:
        await kg.close()
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())))
