"""``keygate serve --tls-cert --tls-key``: HTTPS and WSS from keygate itself, checked against a test CA.

The certificates are made here with ``cryptography``: a test CA, and a server certificate it signs for
127.0.0.1. Clients trust the CA only, so a passing handshake means the server presented that
certificate, and a client that trusts only the system's CAs is refused.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import json
import re
import secrets
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cli_support import clean_env, keygate
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.asyncio.client import connect

from keygate.config import Settings
from keygate.domain.iprules import IpAllowlist
from keygate.domain.permissions import parse_permissions
from keygate.domain.signature import compute_signature
from keygate.service import Keygate
from keygate.service.principal import OPERATOR
from support import Server, start_server, stop_server

_CSRF = re.compile(r'name="csrf_token" value="([^"]*)"')


@dataclass
class Pki:
    ca: Path
    cert: Path
    key: Path
    other_key: Path  # a key that belongs to no certificate here
    encrypted_key: Path


def _pem_key(key: ec.EllipticCurvePrivateKey, path: Path, password: bytes | None = None) -> Path:
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))
    path.chmod(0o600)
    return path


def make_pki(folder: Path, days: int = 1, expired: bool = False) -> Pki:
    """A CA and a server certificate for 127.0.0.1, valid for ``days`` (or ended yesterday)."""
    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=days + 1 if expired else 0)
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keygate test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    server = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])).issuer_name(ca_name)
              .public_key(server_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
              .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
              .sign(ca_key, hashes.SHA256()))
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "cert.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    return Pki(folder / "ca.pem", folder / "cert.pem", _pem_key(server_key, folder / "key.pem"),
               _pem_key(ec.generate_private_key(ec.SECP256R1()), folder / "other-key.pem"),
               _pem_key(server_key, folder / "encrypted-key.pem", b"passphrase"))


@dataclass
class Deployment:
    settings: Settings
    pki: Pki
    user_id: int
    username: str
    password: str
    api_key: str
    secret: str


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    """A deployment of its own (SQLite) with one user and one key, made before any server runs."""
    folder = tmp_path_factory.mktemp("tls")
    settings = Settings(data_dir=folder / "var", master_key=base64.b64encode(secrets.token_bytes(32)).decode(),
                        default_replay_mode="compatible")
    password = secrets.token_urlsafe(16)

    async def populate() -> Deployment:
        kg = Keygate(settings)
        await kg.start(bootstrap_admin=False)
        try:
            user = await kg.users.create(OPERATOR, "tlsuser", password, "")
            created = await kg.keys.create(OPERATOR, user.user_id, parse_permissions(["Trading"]),
                                           IpAllowlist(), "tls")
            return Deployment(settings, make_pki(folder), user.user_id, user.username, password,
                              created.key.api_key, created.secret)
        finally:
            await kg.close()

    return asyncio.run(populate())


@pytest.fixture(scope="module")
def tls_server(deployment: Deployment) -> Iterator[Server]:
    """``keygate serve --tls-cert --tls-key``, the options on the command line."""
    srv = start_server(deployment.settings, args=["--tls-cert", str(deployment.pki.cert), "--tls-key", str(deployment.pki.key)],
                       ca_file=deployment.pki.ca)
    yield srv
    stop_server(srv)


def trusting(pki: Pki) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki.ca))


def key_headers(d: Deployment, nonce: str) -> dict[str, str]:
    return {"APIKey": d.api_key, "UserId": str(d.user_id), "Nonce": nonce,
            "Signature": compute_signature(d.secret, nonce, str(d.user_id), d.api_key)}


def test_https_ping_key_sign_in_and_a_private_call(tls_server: Server, deployment: Deployment) -> None:
    assert tls_server.base_url.startswith("https://127.0.0.1:")
    assert f"keygate listening on {tls_server.base_url} " in tls_server.log()
    with httpx.Client(base_url=tls_server.base_url, verify=trusting(deployment.pki), timeout=10) as client:
        assert client.get("/AP/Ping").json() == {"msg": "PONG"}
        auth = client.post("/AP/AuthenticateUser", headers=key_headers(deployment, "1700000000001"))
        assert auth.status_code == 200, auth.text
        body = auth.json()
        assert body["Authenticated"] is True and body["User"]["UserId"] == deployment.user_id
        info = client.post("/AP/GetUserInfo", headers={"aptoken": body["SessionToken"]})
        assert info.status_code == 200 and info.json()["UserName"] == deployment.username


def test_the_port_speaks_tls_only_and_is_verified(tls_server: Server) -> None:
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{tls_server.base_url}/AP/Ping", timeout=5)  # the system's CAs do not know the test CA
    with pytest.raises(httpx.HTTPError):
        httpx.get(tls_server.base_url.replace("https://", "http://") + "/AP/Ping", timeout=5)


async def test_wss_authenticate_user_frame(tls_server: Server, deployment: Deployment) -> None:
    url = tls_server.base_url.replace("https://", "wss://") + "/WSGateway"
    async with connect(url, ssl=trusting(deployment.pki)) as ws:
        await ws.send(json.dumps({"m": 0, "i": 2, "n": "AuthenticateUser",
                                  "o": json.dumps(key_headers(deployment, "1700000000002"))}))
        reply = json.loads(await ws.recv())
        assert (reply["m"], reply["i"], reply["n"]) == (1, 2, "AuthenticateUser")
        body = json.loads(reply["o"])
        assert body["Authenticated"] is True and body["User"]["UserId"] == deployment.user_id
        await ws.send(json.dumps({"m": 0, "i": 4, "n": "GetUserInfo", "o": "{}"}))
        assert json.loads(json.loads(await ws.recv())["o"])["UserName"] == deployment.username


def test_console_cookies_are_secure_over_https(tls_server: Server, deployment: Deployment) -> None:
    with httpx.Client(base_url=f"{tls_server.base_url}/console", verify=trusting(deployment.pki), timeout=10) as client:
        page = client.get("/login")
        assert re.search(r"kg_pre=[^;]+;.*\bSecure\b", page.headers["set-cookie"], re.IGNORECASE), page.headers["set-cookie"]
        signed_in = client.post("/login", data={"username": deployment.username, "password": deployment.password,
                                                "csrf_token": _CSRF.search(page.text).group(1)})  # type: ignore[union-attr]
        assert signed_in.status_code in (302, 303), signed_in.text
        session = [c for c in signed_in.headers.get_list("set-cookie") if c.startswith("kg_session=")]
        assert session and re.search(r"\bSecure\b", session[0], re.IGNORECASE) and "HttpOnly" in session[0], session


def test_tls_from_the_environment_with_workers(deployment: Deployment) -> None:
    srv = start_server(deployment.settings, args=["--workers", "2"], ca_file=deployment.pki.ca,
                       extra_env={"KEYGATE_TLS_CERT_FILE": str(deployment.pki.cert),
                                  "KEYGATE_TLS_KEY_FILE": str(deployment.pki.key)})
    try:
        assert f"keygate listening on {srv.base_url} " in srv.log()
        with httpx.Client(base_url=srv.base_url, verify=trusting(deployment.pki), timeout=10) as client:
            for nonce in ("1700000000003", "1700000000004", "1700000000005"):  # new connections: either worker
                with httpx.Client(base_url=srv.base_url, verify=trusting(deployment.pki), timeout=10) as fresh:
                    assert fresh.post("/AP/AuthenticateUser", headers=key_headers(deployment, nonce)).json()["Authenticated"] is True
            assert client.get("/AP/Ping").json() == {"msg": "PONG"}
    finally:
        stop_server(srv)


def _serve(d: Deployment, *args: str) -> tuple[int, str]:
    env = clean_env(KEYGATE_DATA_DIR=str(d.settings.data_dir), KEYGATE_MASTER_KEY=d.settings.master_key or "")
    result = keygate("serve", "--port", "1", *args, env=env)  # port 1: were it ever served, it could not bind
    output = (result.stdout + result.stderr).strip()
    assert "Traceback" not in output, output
    assert len(output.splitlines()) == 1, output
    return result.returncode, output


@pytest.mark.parametrize(("cert", "key", "message"), [
    ("missing.pem", "key", "cannot read the TLS certificate (--tls-cert / KEYGATE_TLS_CERT_FILE) {cert}: No such file or directory"),
    ("cert", "missing.pem", "cannot read the TLS private key (--tls-key / KEYGATE_TLS_KEY_FILE) {key}: No such file or directory"),
    ("cert", ".", "cannot read the TLS private key (--tls-key / KEYGATE_TLS_KEY_FILE) {key}: Is a directory"),
    ("key", "key", "the TLS certificate (--tls-cert / KEYGATE_TLS_CERT_FILE) {cert} is not a PEM certificate"),
    ("cert", "cert", "the TLS private key (--tls-key / KEYGATE_TLS_KEY_FILE) {key} is not a PEM private key"),
    ("cert", "other_key", "the TLS private key (--tls-key / KEYGATE_TLS_KEY_FILE) {key} does not belong to the TLS certificate"),
    ("cert", "encrypted_key", "the TLS private key (--tls-key / KEYGATE_TLS_KEY_FILE) {key} is encrypted"),
    ("cert", "shared_key", "the TLS private key (--tls-key / KEYGATE_TLS_KEY_FILE) {key} is readable by every user"),
])
def test_a_bad_certificate_or_key_stops_the_start_in_one_line(deployment: Deployment, cert: str, key: str, message: str) -> None:
    pki, folder = deployment.pki, deployment.pki.cert.parent
    cert_path = getattr(pki, cert) if hasattr(pki, cert) else folder / cert
    key_path = getattr(pki, key) if hasattr(pki, key) else folder / key
    if key == "shared_key":
        key_path = folder / "shared-key.pem"
        key_path.write_bytes(pki.key.read_bytes())
        key_path.chmod(0o644)
    code, output = _serve(deployment, "--tls-cert", str(cert_path), "--tls-key", str(key_path))
    assert code == 2
    assert output.startswith("error: " + message.format(cert=cert_path, key=key_path)), output


def test_a_certificate_without_its_key_stops_the_start(deployment: Deployment) -> None:
    code, output = _serve(deployment, "--tls-cert", str(deployment.pki.cert))
    assert code == 2 and "KEYGATE_TLS_KEY_FILE (--tls-key)" in output and "give both" in output


def test_an_expired_certificate_is_a_warning(tmp_path: Path) -> None:
    from keygate.cli.tls import check_tls_files

    fresh = make_pki(tmp_path)
    assert check_tls_files(fresh.cert, fresh.key) == []
    (tmp_path / "old").mkdir()
    old = make_pki(tmp_path / "old", expired=True)
    (warning,) = check_tls_files(old.cert, old.key)
    assert warning.startswith("warning: the TLS certificate") and "expired on" in warning
