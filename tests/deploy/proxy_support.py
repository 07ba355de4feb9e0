"""Real reverse proxies for the deployment tests: Debian's nginx and HAProxy as the test's own processes.

Each runs in the foreground from a config written to a temporary folder, with its pid file, logs and
temporary files there, on a free port; no system daemon is used or touched. ``EchoUpstream`` is the
operator's API behind the proxy: it answers every request with the headers it received, as JSON.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from keygate.domain.signature import compute_signature
from keygate.service import Keygate
from keygate.service.keys import CreatedKey
from keygate.service.principal import OPERATOR
from support import free_port, need

IP_FAILURES = 3  # per-address failures before 429 on the test server: low, so that throttling by address shows

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


def need_binary(path: str, package: str) -> None:
    need(os.access(path, os.X_OK), f"{package} ({path}; apt-get install {package})")


def loopback_pair() -> tuple[str, str]:
    """Two fresh client addresses in 127.0.0.0/8 (every one of them is this host's on Linux), never
    127.0.0.1 (the proxies' own), so that per-address counters of one test never meet another's."""
    base = 2 + secrets.randbelow(250)
    net = secrets.randbelow(250) + 2
    return f"127.{net}.{base}.5", f"127.{net}.{base}.6"


def client_from(address: str, **kwargs: object) -> httpx.Client:
    """An HTTP client whose connections leave from ``address``, as a client on another machine would."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address, verify=kwargs.pop("verify", True)), **kwargs)  # type: ignore[arg-type]


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path, what: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited at start:\n{log.read_text() if log.exists() else ''}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"{what} did not listen on {port}:\n{log.read_text() if log.exists() else ''}")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        reply = json.dumps({
            "method": self.command, "path": self.path, "headers": [[k, v] for k, v in self.headers.items()],
            "body": body.decode("latin-1"), "peer": self.client_address[0],
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Upstream", "echo")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass
class EchoUpstream:
    port: int
    server: ThreadingHTTPServer

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def echo_upstream() -> Iterator[EchoUpstream]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield EchoUpstream(server.server_address[1], server)
    finally:
        server.shutdown()
        server.server_close()


def received(reply: httpx.Response) -> dict[str, list[str]]:
    """The headers the echo upstream received, by lower-case name (every value of a repeated one)."""
    found: dict[str, list[str]] = {}
    for name, value in reply.json()["headers"]:
        found.setdefault(name.lower(), []).append(value)
    return found


@dataclass
class Proxy:
    port: int
    process: subprocess.Popen[bytes]
    folder: Path
    log: Path

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.folder.glob("*.log")))


def nginx_main_config(folder: Path, http_body: str) -> str:
    """A whole nginx.conf around ``http_body`` (the server blocks), with every path in ``folder``."""
    user = "user root;\n" if os.geteuid() == 0 else ""  # as root, workers would otherwise be "nobody"
    temp = "\n".join(f"    {kind}_temp_path {folder / (kind + '_temp')};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""{user}worker_processes 1;
daemon off;
pid {folder / 'nginx.pid'};
error_log {folder / 'error.log'} info;
events {{ worker_connections 256; }}
http {{
    access_log {folder / 'access.log'};
{temp}
{http_body}
}}
"""


@contextmanager
def run_nginx(folder: Path, http_body: str, port: int) -> Iterator[Proxy]:
    folder.mkdir(parents=True, exist_ok=True)
    conf = folder / "nginx.conf"
    conf.write_text(nginx_main_config(folder, http_body))
    log = folder / "error.log"
    test = subprocess.run([NGINX, "-t", "-p", str(folder), "-c", str(conf)], capture_output=True, text=True, check=False)
    assert test.returncode == 0, f"nginx -t refused the config:\n{test.stderr}\n{conf.read_text()}"
    out = (folder / "stdout.log").open("wb")
    process = subprocess.Popen([NGINX, "-p", str(folder), "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, process, log, "nginx")
        yield Proxy(port, process, folder, log)
    finally:
        stop(process)
        out.close()


@contextmanager
def run_haproxy(folder: Path, config: str, port: int) -> Iterator[Proxy]:
    folder.mkdir(parents=True, exist_ok=True)
    conf = folder / "haproxy.cfg"
    conf.write_text(config)
    log = folder / "haproxy.log"
    test = subprocess.run([HAPROXY, "-c", "-f", str(conf)], capture_output=True, text=True, check=False)
    assert test.returncode == 0, f"haproxy -c refused the config:\n{test.stdout}{test.stderr}\n{config}"
    out = log.open("wb")
    process = subprocess.Popen([HAPROXY, "-db", "-f", str(conf), "-p", str(folder / "haproxy.pid")], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, process, log, "haproxy")
        yield Proxy(port, process, folder, log)
    finally:
        stop(process)
        out.close()


def self_signed(folder: Path, host: str = "localhost") -> tuple[Path, Path]:
    """A certificate for ``host`` and 127.0.0.1, and its key, made now (PEM files in ``folder``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path


def doc_block(text: str, start: str, end: str, language: str, index: int = 0) -> str:
    """The ``index``-th fenced ``language`` block between the headings ``start`` and ``end`` of a document."""
    section = text[text.index(start):text.index(end, text.index(start))]
    blocks = re.findall(rf"```{language}\n(.*?)```", section, re.DOTALL)
    assert len(blocks) > index, f"expected a {language} block under {start!r}"
    return blocks[index]


def free_ports(n: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return sorted(ports)


def signed(created: CreatedKey) -> dict[str, str]:
    """The four signed headers of ``created``'s key with a fresh nonce."""
    nonce = str(secrets.randbelow(10**12) + 10**12)
    uid, key = created.key.user_id, created.key.api_key
    return {"APIKey": key, "Signature": compute_signature(created.secret, nonce, uid, key), "UserId": str(uid), "Nonce": nonce}


def signed_payload(created: CreatedKey) -> dict[str, Any]:
    """``AuthenticateUser``'s payload as a WebSocket frame carries it."""
    headers = signed(created)
    return {"APIKey": headers["APIKey"], "Signature": headers["Signature"], "UserId": int(headers["UserId"]), "Nonce": headers["Nonce"]}


async def audited_addresses(kg: Keygate, created: CreatedKey, at_least: int = 1) -> list[str | None]:
    """The client addresses of the key's authentication audit rows, once the server has written ``at_least``."""
    for _ in range(60):
        rows = [r for r in await kg.audit.query(OPERATOR, api_key=created.key.api_key, limit=100) if r.action.startswith("auth.")]
        if len(rows) >= at_least:
            return [r.client_ip for r in rows]
        await asyncio.sleep(0.1)
    raise AssertionError(f"the server wrote fewer than {at_least} audit rows for the key")
