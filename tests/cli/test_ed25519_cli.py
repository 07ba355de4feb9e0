"""Ed25519 keys from the command line: ``keygate keypair`` makes the pair, ``keygate key create --type
ed25519 --public-key`` registers the public half, ``keygate sign --private-key`` signs with the private
half, and the server accepts that signature. Real ``python -m keygate`` processes, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import time
from pathlib import Path

import pytest
from cli_support import assert_clean_refusal, clean_env, keygate, settings_env, unique_name
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from keygate.config import Settings
from keygate.domain.key_material import KeyType, fingerprint
from keygate.domain.signature import signing_message
from keygate.service import Keygate
from keygate.service.auth import KeyCredentials
from keygate.service.principal import OPERATOR

# RFC 8032 test 1's key signs the APEX test vector's message (the README's recipe).
SEED = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
NONCE, USER_ID, API_KEY = "2277045681", "42", "8d4f1a2b3c5e6f708192a3b4c5d6e7f8"
SIGNATURE_B64 = "vprmf88ZxIed6Jy2sI+tx/S74F8bDDQTc32b4h2tEhhFzxeyMLyr4Ni/YfkCvz4Li9cf0hOPEVHhF+Fz1UD1Dg=="
SIGN_ARGS = ("sign", "--api-key", API_KEY, "--user-id", USER_ID, "--nonce", NONCE)


@pytest.fixture
def cli_env(kg: Keygate, settings: Settings) -> dict[str, str]:
    return clean_env(**settings_env(settings))


def _pem(seed: str) -> str:
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed))
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()


def test_sign_with_a_private_key_gives_the_readme_vector(tmp_path: Path) -> None:
    pem = tmp_path / "key.pem"
    pem.write_text(_pem(SEED))
    result = keygate(*SIGN_ARGS, "--private-key", str(pem), env=clean_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == SIGNATURE_B64
    for source, text in (("-", SEED), ("-", _pem(SEED))):  # the seed in hex, or the PEM, on stdin
        result = keygate(*SIGN_ARGS, "--private-key", source, "--encoding", "hex", env=clean_env(), input=text)
        assert result.stdout.strip() == base64.b64decode(SIGNATURE_B64).hex(), result.stderr
    headers = keygate(*SIGN_ARGS, "--private-key", str(pem), "--headers", env=clean_env())
    assert f"Signature: {SIGNATURE_B64}" in headers.stdout and f"Nonce: {NONCE}" in headers.stdout


def test_sign_refuses_a_public_key_or_garbage_cleanly(tmp_path: Path) -> None:
    public = tmp_path / "key.pub"
    public.write_text(Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode())
    assert_clean_refusal(keygate(*SIGN_ARGS, "--private-key", str(public), env=clean_env()), "public key")
    garbage = tmp_path / "garbage"
    garbage.write_text("not a key")
    assert_clean_refusal(keygate(*SIGN_ARGS, "--private-key", str(garbage), env=clean_env()), "private key must be")
    assert_clean_refusal(keygate(*SIGN_ARGS, "--private-key", str(tmp_path / "absent"), env=clean_env()), "cannot read")


async def test_keypair_create_sign_and_sign_in(kg: Keygate, cli_env: dict[str, str], make_user, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "bot.pem"
    made = keygate("keypair", "--out", str(out), env=cli_env)
    assert made.returncode == 0, made.stderr
    assert os.stat(out).st_mode & 0o777 == 0o600
    private = serialization.load_pem_private_key(out.read_bytes(), password=None)
    assert isinstance(private, Ed25519PrivateKey)
    public = serialization.load_pem_public_key(Path(f"{out}.pub").read_bytes())
    assert isinstance(public, Ed25519PublicKey)
    raw = public.public_bytes_raw()
    assert private.public_key().public_bytes_raw() == raw and fingerprint(raw) in made.stdout
    assert "PRIVATE KEY" not in made.stdout
    assert_clean_refusal(keygate("keypair", "--out", str(out), env=cli_env), "exists")

    printed = keygate("keypair", env=cli_env)
    assert printed.returncode == 0 and "-----BEGIN PRIVATE KEY-----" in printed.stdout and "-----BEGIN PUBLIC KEY-----" in printed.stdout

    user = await make_user()
    created = keygate("key", "create", "--user", str(user.user_id), "--type", "ed25519", "--public-key", f"{out}.pub",
                      "-p", "Trading", env=cli_env)
    assert created.returncode == 0, created.stderr
    assert "API SECRET" not in created.stdout and fingerprint(raw) in created.stdout
    api_key = re.search(r"^API KEY:\s+(\S+)$", created.stdout, re.MULTILINE).group(1)  # type: ignore[union-attr]
    [stored] = await kg.keys.list(OPERATOR, user.user_id)
    assert stored.key_type is KeyType.ED25519 and stored.public_key == raw and stored.sealed_secret is None

    nonce = "1700000000005"
    signed = keygate("sign", "--api-key", api_key, "--user-id", str(user.user_id), "--nonce", nonce, "--private-key", str(out),
                     env=clean_env())
    assert signed.returncode == 0, signed.stderr
    creds = KeyCredentials.parse({"apikey": api_key, "signature": signed.stdout.strip(), "userid": str(user.user_id), "nonce": nonce})
    grant = await kg.auth.authenticate_key(creds, "127.0.0.1")
    await kg.flush()
    assert grant.user.user_id == user.user_id

    # Rotation takes the new public key, from stdin; the list says the type; JSON has no secret.
    newer = Ed25519PrivateKey.generate()
    rotated = keygate("key", "rotate", api_key, "--public-key", "-", env=cli_env,
                      input=base64.b64encode(newer.public_key().public_bytes_raw()).decode() + "\n")
    assert rotated.returncode == 0, rotated.stderr
    assert json.loads(rotated.stdout)["PublicKeyFingerprint"] == fingerprint(newer.public_key().public_bytes_raw())
    listing = keygate("key", "list", "--user", str(user.user_id), env=cli_env)
    assert listing.stdout.strip().endswith("ed25519")
    # The CLI is another process: its rotation reaches this one within a second (docs/security.md).
    deadline = time.monotonic() + 1.5
    while (await kg.keys.lookup(api_key)).public_key == raw and time.monotonic() < deadline:  # type: ignore[union-attr]
        await asyncio.sleep(0.05)
    creds = KeyCredentials.parse({"apikey": api_key, "userid": str(user.user_id), "nonce": "1700000000006",
                                  "signature": newer.sign(signing_message("1700000000006", user.user_id, api_key)).hex()})
    assert (await kg.auth.authenticate_key(creds, "127.0.0.1")).user.user_id == user.user_id
    await kg.flush()


async def test_key_create_refuses_bad_public_keys_cleanly(kg: Keygate, cli_env: dict[str, str], make_user, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    private_file = tmp_path / "private.pem"
    private_file.write_text(_pem(SEED))
    base = ("key", "create", "--user", str(user.user_id))
    assert_clean_refusal(keygate(*base, "--type", "ed25519", "--public-key", str(private_file), env=cli_env), "private key")
    assert_clean_refusal(keygate(*base, "--type", "ed25519", env=cli_env), "PublicKey")
    assert_clean_refusal(keygate(*base, "--type", "rsa", env=cli_env), "KeyType")
    assert_clean_refusal(keygate(*base, "--type", "ed25519", "--public-key", str(tmp_path / "none"), env=cli_env), "cannot read")
    assert await kg.keys.list(OPERATOR, user.user_id) == []
    _ = unique_name
