"""Property-based conformance: schemathesis against the app's own ``/openapi.json``.

Every documented operation (each APEX endpoint, by GET and by POST, and any other documented route)
is called with generated headers, query strings and bodies, and with undeclared methods; each reply
must not be a server error and must match the status codes, headers and schemas the document
declares. Most cases of a private operation carry a valid ``aptoken`` (a key session or a password
session, as the operation needs), the key-editing operations are pointed at a real key, and some
sign-ins carry a valid signature, so the authenticated code paths and success replies are checked
too, not only the refusals.

The app runs in-process on schemathesis's own event-loop thread, so it opens its own service
(``create_app(settings)``) on the session's database instead of sharing ``kg``, whose connections
belong to the test session's loop. Users are created through ``kg`` beforehand; tokens are obtained
from the app itself, so sessions are bound to the address schemathesis calls from. Examples are
derandomized, so a run is reproducible; 25-50 s per database on this (shared, 2-core) machine.
"""

from __future__ import annotations

import secrets
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from keygate.api import create_app
from keygate.config import Settings
from keygate.domain.iprules import IpAllowlist
from keygate.domain.permissions import parse_permissions
from keygate.domain.signature import compute_signature
from keygate.service import Keygate
from keygate.service.principal import OPERATOR

KEY_SESSION_OPS = {"GetUserInfo", "GetUserAccounts", "GetUserPermissions", "GetUserAPIKeys", "GetAvailablePermissionList", "LogOut"}
KEY_EDIT_OPS = {"UpdateUserAPIKey", "RotateUserAPIKey", "RemoveUserAPIKey", "AddUserAPIKeyPermission", "RemoveUserAPIKeyPermission"}
ADMIN_OPS = {"GetAuditLog", "LockUser", "UnlockUser"}
SIGN_IN_OPS = {"AuthenticateUser", "Authenticate", "WebAuthenticateUser"}

# Every reply is judged against the document: its status is a documented one, its body matches that
# status's schema (the schemas list every field and admit no others), its content type and
# documented headers are right; and no case is a server error.
CHECKS = [
    not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
    response_schema_conformance, unsupported_method, allow_header_conformance, negative_data_rejection,
]


@dataclass(frozen=True)
class Person:
    user_id: int
    username: str
    password: str


@dataclass
class Accounts:
    """Who the generated calls act as. Tokens and keys are made through the app under test.

    ``user`` signs in with its key and password; ``editor`` owns the key that the key-editing
    operations change, rotate and delete; ``admin`` locks and unlocks only ``victim``, so no other
    test's user is touched.
    """

    client: asgi.ASGIClient
    people: dict[str, Person]
    key: dict[str, str]  # APIKey, secret, UserId of user's key
    tokens: dict[str, str] = field(default_factory=dict)
    spare_key: str | None = None

    def signed_headers(self) -> dict[str, str]:
        nonce = str(secrets.randbelow(10**12) + 10**12)
        uid, api_key = self.key["UserId"], self.key["APIKey"]
        return {"APIKey": api_key, "Signature": compute_signature(self.key["secret"], nonce, int(uid), api_key), "UserId": uid, "Nonce": nonce}

    def _new_token(self, who: str) -> str:
        if who == "key":
            r = self.client.post("/AP/AuthenticateUser", headers=self.signed_headers())
        else:
            p = self.people[who]
            r = self.client.post("/AP/AuthenticateUser", json={"UserName": p.username, "Password": p.password})
        assert r.status_code == 200, r.text
        return str(r.json()["SessionToken"])

    def token(self, who: str) -> str:
        """A live token of ``who`` ("key", "user", "editor", "admin"), made again if a case ended it."""
        cached = self.tokens.get(who)
        if cached is None or self.client.get("/AP/GetUserInfo", headers={"aptoken": cached}).status_code != 200:
            cached = self.tokens[who] = self._new_token(who)
        return cached

    def editable_key(self) -> str:
        """The editor's key, made again after a case deleted it."""
        headers = {"aptoken": self.token("editor")}
        listed = self.client.get("/AP/GetUserAPIKeys", headers=headers).json()
        if self.spare_key not in [k["APIKey"] for k in listed]:
            r = self.client.post("/AP/AddUserAPIKey", headers=headers, json={"Label": "schemathesis"})
            assert r.status_code == 200, r.text
            self.spare_key = str(r.json()["APIKey"])
        return self.spare_key


@pytest.fixture(scope="module")
async def people(kg: Keygate) -> tuple[dict[str, Person], dict[str, str]]:
    made: dict[str, Person] = {}
    for role in ("user", "editor", "admin", "victim"):
        password = secrets.token_urlsafe(16)
        user = await kg.users.create(OPERATOR, f"st{role}{secrets.token_hex(4)}", password, is_admin=role == "admin")
        made[role] = Person(user.user_id, user.username, password)
    uid = made["user"].user_id
    created = await kg.keys.create(OPERATOR, uid, parse_permissions(["Trading"]), IpAllowlist())
    return made, {"APIKey": created.key.api_key, "secret": created.secret, "UserId": str(uid)}


@pytest.fixture(scope="module")
def accounts(settings: Settings, people: tuple[dict[str, Person], dict[str, str]]) -> Iterator[Accounts]:
    with asgi.get_client(create_app(settings)) as client:
        yield Accounts(client=client, people=people[0], key=people[1])
    asgi.shutdown_lifespans()


# The document does not depend on the database: read it from an app that is never started.
schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi())


def _choice(case: schemathesis.Case, n: int) -> int:
    """A choice that is a function of the case, so a derandomized run is the same run every time."""
    return zlib.crc32(repr((case.method, case.path, case.headers, case.query, case.body)).encode()) % n


def _without_user_id(values: Any) -> dict[str, Any] | None:
    """The fields of a query or body without ``UserId`` (a body that is not an object counts as none)."""
    if isinstance(values, dict):
        return {k: v for k, v in values.items() if k.lower() != "userid"} or None
    return None


def authenticate(case: schemathesis.Case, accounts: Accounts) -> bool:
    """Give most cases valid credentials for their operation; leave one in four as generated.

    Returns whether generated values were replaced (not only a token added): then the case is no
    longer what schemathesis generated, and its judgement of "schema-violating input" does not apply.
    """
    name = case.path.rsplit("/", 1)[-1]
    roll = _choice(case, 4)
    if roll == 0:
        return False
    if name in SIGN_IN_OPS:
        if roll == 1:
            # A plain, valid key sign-in: signed headers win over a body or Basic credentials, so a
            # generated one beside them would be ignored, not judged.
            case.headers = accounts.signed_headers()
            case.body = None
            return True
        if roll == 2:
            # A valid password sign-in, in the body (POST) or the query string (GET).
            p = accounts.people["user"]
            case.headers = {}
            if case.method == "GET":
                case.query, case.body = {"UserName": p.username, "Password": p.password}, None
            else:
                case.query, case.body = None, {"UserName": p.username, "Password": p.password}
            return True
        return False
    if "APEX: private" not in case.operation.definition.raw.get("tags", []):
        return False
    if name in ADMIN_OPS:
        who = "admin"
    elif name in KEY_EDIT_OPS:
        who = "editor"
    elif name in KEY_SESSION_OPS:
        who = "key" if roll % 2 else "user"
    else:
        who = "user"
    case.headers = {**(case.headers or {}), "aptoken": accounts.token(who)}
    # GET operations declare no body: their fields travel in the query string.
    container = "query" if case.method == "GET" else "body"
    if name in KEY_EDIT_OPS and roll != 3:
        setattr(case, container, {**(_without_user_id(getattr(case, container)) or {}), "APIKey": accounts.editable_key()})
        return True
    if name in ("LockUser", "UnlockUser"):
        case.query = _without_user_id(case.query)
        setattr(case, container, {**(_without_user_id(getattr(case, container)) or {}), "UserId": accounts.people["victim"].user_id})
        return True
    return False


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_openapi_conformance(case: schemathesis.Case, accounts: Accounts) -> None:
    replaced = authenticate(case, accounts)
    # ``positive_data_acceptance`` expects every schema-valid request to be accepted. The document
    # cannot state APEX's cross-field rules (credentials in headers or body, a 64-hex Signature, a
    # 6-digit Code), so a schema-valid request may still be malformed; its documented 400 is right.
    checks = [c for c in CHECKS if not (replaced and c is negative_data_rejection)]
    case.call_and_validate(session=accounts.client, base_url=f"http://{asgi.HOST}", checks=checks)
