"""The protocol's test vector through ``keygate sign``, the SDK and the server.

No API lets anyone choose a key's secret, so the server leg is: a key and secret that the server
issued (through the CLI), signed by ``keygate sign`` as the README tells, are accepted by a real server;
and ``keygate sign`` computes the vector itself.
"""

from __future__ import annotations

import httpx
from e2e_support import TEST_VECTOR as V
from e2e_support import Server, cli_create_key, keygate_cli, unique_name

import keygate
from keygate.domain.signature import compute_signature


def test_the_vector_through_keygate_sign_and_the_sdk() -> None:
    signed = keygate_cli("sign", "--api-key", V["api_key"], "--user-id", V["user_id"], "--nonce", V["nonce"],
                         env={"PATH": "/usr/bin:/bin", "KEYGATE_API_SECRET": V["secret"]})
    assert signed.returncode == 0, signed.stderr
    assert signed.stdout.strip() == V["signature"]
    assert compute_signature(V["secret"], V["nonce"], int(V["user_id"]), V["api_key"]) == V["signature"]
    client = keygate.Client("http://127.0.0.1:9", V["user_id"], V["api_key"], V["secret"])
    try:
        assert client.signed_headers(V["nonce"])["Signature"] == V["signature"]
    finally:
        client.close()


async def test_a_server_issued_key_signed_by_keygate_sign_authenticates(server: Server, kg) -> None:  # type: ignore[no-untyped-def]
    username = unique_name("vector")
    made = keygate_cli("user", "create", username, "--password-stdin", env=server.env, input="vector password 1\n")
    assert made.returncode == 0, made.stderr
    key = cli_create_key(server.env, username, "--permission", "Trading", "--replay-mode", "compatible")
    user_id = str(key["UserId"])
    nonce = key["Nonce"]  # the nonce shown at creation, reused as the seed page tells users

    signed = keygate_cli("sign", "--api-key", key["APIKey"], "--user-id", user_id, "--nonce", nonce, "--headers",
                         env={**server.env, "KEYGATE_API_SECRET": key["APISecret"]})
    assert signed.returncode == 0, signed.stderr
    headers = dict(line.split(": ", 1) for line in signed.stdout.splitlines())
    assert headers["Signature"] == compute_signature(key["APISecret"], nonce, user_id, key["APIKey"])

    by_post = httpx.post(f"{server.base_url}/AP/AuthenticateUser", headers=headers)
    assert by_post.status_code == 200, by_post.text
    assert by_post.json()["Authenticated"] is True
    assert by_post.json()["User"]["UserName"] == username

    by_get = httpx.get(f"{server.base_url}/ap/authenticateuser", headers=headers)  # GET, lower-case path
    assert by_get.json()["Authenticated"] is True

    upper = {**headers, "Signature": headers["Signature"].upper()}  # either hex case
    assert httpx.post(f"{server.base_url}/AP/Authenticate", headers=upper).json()["Authenticated"] is True

    tampered = {**headers, "Signature": headers["Signature"][:-1] + ("0" if headers["Signature"][-1] != "0" else "1")}
    refused = httpx.post(f"{server.base_url}/AP/AuthenticateUser", headers=tampered)
    assert refused.status_code == 401
    assert refused.json() == {"Authenticated": False, "Locked": False, "errormsg": "Invalid credentials", "errorcode": 20}
