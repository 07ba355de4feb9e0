"""``/metrics`` and the JSON logs of a real server process, driven as clients and an attacker would.

One server (its own SQLite database, ``KEYGATE_LOG_FORMAT=json``, debug logging) serves sign-ins with
a key and a password (right and wrong), private calls with ``aptoken`` and with signed headers, key
creation (whose reply holds the secret), WebSocket frames, forward auth and random paths. Then
``/metrics`` and everything the process wrote are searched for every secret, token and password used.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import connect

from keygate.api.endpoints import ENDPOINTS
from keygate.api.metrics import FIXED
from keygate.config import Settings
from keygate.domain.signature import compute_signature
from support import Server, free_port, need, settings_env, start_server, stop_server

ROOT = Path(__file__).resolve().parents[2]
ALLOWED_ENDPOINT_LABELS = set(ENDPOINTS) | set(FIXED.values()) | {"console", "websocket", "other"}


@dataclass
class Observed:
    server: Server
    secrets: dict[str, str] = field(default_factory=dict)  # what must never appear: name -> value
    metrics: str = ""
    api_key: str = ""


_nonce = [int(time.time() * 1000)]


def _signed(api_key: str, secret: str, user_id: int) -> dict[str, str]:
    _nonce[0] += 1
    nonce = str(_nonce[0])
    return {"APIKey": api_key, "Signature": compute_signature(secret, nonce, user_id, api_key), "UserId": str(user_id), "Nonce": nonce}


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, frozenset(labels.items())), 0.0)


def metric_names(text: str) -> set[str]:
    """Every family and sample name in an exposition (a labelled metric with no series yet has its TYPE line)."""
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(s.name for s in family.samples)
    names.update(re.findall(r"^# TYPE (\S+)", text, re.MULTILINE))
    return names


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    data = tmp_path_factory.mktemp("observed")
    settings = Settings(data_dir=data, master_key=base64.b64encode(secrets.token_bytes(32)).decode())
    # `init` in its own process: the first admin's password is printed there, by design, not in the server's log.
    init = subprocess.run([sys.executable, "-m", "keygate", "init"], check=False, env={**os.environ, **settings_env(settings)},
                          capture_output=True, text=True, timeout=60)
    assert init.returncode == 0, init.stderr
    password = re.search(r"password: (\S+)", init.stdout).group(1)  # type: ignore[union-attr]
    server = start_server(settings, {"KEYGATE_LOG_FORMAT": "json", "KEYGATE_LOG_LEVEL": "debug"})
    seen = Observed(server)
    try:
        _drive(seen, password)
        time.sleep(1.5)  # one sample of the batched writers' queues
        seen.metrics = httpx.get(f"{server.base_url}/metrics", timeout=5).text
        yield seen
    finally:
        stop_server(server)


def _drive(seen: Observed, password: str) -> None:
    base = seen.server.base_url
    wrong_password = "not-the-password-" + secrets.token_hex(6)
    seen.secrets.update(password=password, wrong_password=wrong_password)
    with httpx.Client(base_url=base, timeout=10) as c:
        r = c.post("/AP/AuthenticateUser", json={"UserName": "admin", "Password": password})
        assert r.status_code == 200, r.text
        admin_token = r.json()["SessionToken"]
        seen.secrets["password_token"] = admin_token
        assert c.post("/AP/AuthenticateUser", json={"UserName": "admin", "Password": wrong_password}).status_code == 401
        query_password = "query-password-" + secrets.token_hex(6)
        seen.secrets["query_password"] = query_password
        assert c.get(f"/ap/authenticateuser?UserName=admin&Password={query_password}").status_code == 401

        r = c.post("/AP/AddUserAPIKey", headers={"aptoken": admin_token}, json={"UserId": 1, "Permissions": ["Trading"]})
        assert r.status_code == 200, r.text
        created = r.json()
        api_key, secret, user_id = created["APIKey"], created["APISecret"], int(created["UserId"])
        seen.api_key = api_key
        seen.secrets["api_secret"] = secret
        r = c.post("/AP/AddUserAPIKey", headers={"aptoken": admin_token},
                   json={"UserId": 1, "Permissions": [], "IpAllowlist": ["10.9.8.0/24"]})
        fenced = r.json()
        seen.secrets["fenced_secret"] = fenced["APISecret"]

        headers = _signed(api_key, secret, user_id)
        seen.secrets["signature"] = headers["Signature"]
        r = c.post("/AP/AuthenticateUser", headers=headers)
        assert r.status_code == 200, r.text
        key_token = r.json()["SessionToken"]
        seen.secrets["key_token"] = key_token
        bad = dict(_signed(api_key, secret, user_id), Signature="0" * 64)
        assert c.post("/AP/AuthenticateUser", headers=bad).status_code == 401
        # Right signature, outside the allowlist: the reason names the address, the metric must not.
        assert c.post("/AP/AuthenticateUser", headers=_signed(fenced["APIKey"], fenced["APISecret"], user_id)).status_code == 401

        for _ in range(3):
            assert c.post("/AP/GetUserInfo", headers={"aptoken": key_token}).status_code == 200
        assert c.get("/AP/GetUserAccounts", headers=_signed(api_key, secret, user_id)).status_code == 200
        assert c.get("/keygate/authorize", headers={"APToken": key_token}).status_code == 200
        assert c.get("/keygate/authorize", headers={"aptoken": "deadbeef-" + secrets.token_hex(16)}).status_code == 401
        for _ in range(30):  # an attacker's random paths
            c.get(f"/AP/{secrets.token_hex(8)}")
            c.get(f"/{secrets.token_hex(8)}/{secrets.token_hex(4)}")
        assert c.get("/console/login").status_code == 200
        assert c.get("/openapi.json").status_code == 200

    with connect(base.replace("http://", "ws://") + "/WSGateway") as ws:
        payload = json.dumps({"UserName": "admin", "Password": password})
        ws.send(json.dumps({"m": 0, "i": 2, "n": "AuthenticateUser", "o": payload}))
        reply = json.loads(ws.recv())
        assert json.loads(reply["o"])["Authenticated"] is True
        seen.secrets["ws_token"] = json.loads(reply["o"])["SessionToken"]
        ws.send(json.dumps({"m": 0, "i": 4, "n": "GetUserInfo", "o": "{}"}))
        assert json.loads(json.loads(ws.recv())["o"])["UserName"] == "admin"
        ws.send("not json")
        ws.recv()


def test_requests_are_counted_by_canonical_endpoint_and_status(observed: Observed) -> None:
    m = observed.metrics
    assert value(m, "keygate_requests_total", endpoint="AuthenticateUser", status="200") == 2
    assert value(m, "keygate_requests_total", endpoint="AuthenticateUser", status="401") == 4  # ?Password= in lower case too
    assert value(m, "keygate_requests_total", endpoint="GetUserInfo", status="200") == 3
    assert value(m, "keygate_requests_total", endpoint="AddUserAPIKey", status="200") == 2
    assert value(m, "keygate_requests_total", endpoint="forward_auth", status="200") == 1
    assert value(m, "keygate_requests_total", endpoint="forward_auth", status="401") == 1
    assert value(m, "keygate_requests_total", endpoint="console", status="200") >= 1
    assert value(m, "keygate_requests_total", endpoint="websocket", status="200") == 2
    assert value(m, "keygate_requests_total", endpoint="websocket", status="400") == 1
    assert value(m, "keygate_requests_total", endpoint="other", status="404") == 60
    assert value(m, "keygate_requests_total", endpoint="docs", status="200") == 1
    assert "process_cpu_seconds_total" in m and "python_info" in m  # one process: its own metrics too
    assert value(m, "keygate_request_duration_seconds_count", endpoint="GetUserInfo") == 3
    assert value(m, "keygate_request_duration_seconds_bucket", endpoint="GetUserInfo", le="+Inf") == 3


def test_random_paths_add_no_label_values(observed: Observed) -> None:
    labels = {dict(labels).get("endpoint") for (name, labels) in samples(observed.metrics) if name.startswith("keygate_request")}
    assert labels - {None} <= ALLOWED_ENDPOINT_LABELS, labels - ALLOWED_ENDPOINT_LABELS
    assert len(observed.metrics.splitlines()) < 2000


def test_authentication_outcomes_by_bounded_reason(observed: Observed) -> None:
    m = observed.metrics
    assert value(m, "keygate_audit_events_total", action="auth.password", outcome="success", reason="") == 2  # HTTP and WebSocket
    assert value(m, "keygate_audit_events_total", action="auth.password", outcome="failure", reason="wrong password") == 2
    assert value(m, "keygate_audit_events_total", action="auth.key", outcome="success", reason="") == 1
    assert value(m, "keygate_audit_events_total", action="auth.key", outcome="failure", reason="signature mismatch") == 1
    assert value(m, "keygate_audit_events_total", action="auth.key", outcome="failure", reason="client ip not in allowlist") == 1
    assert value(m, "keygate_audit_events_total", action="auth.signed_request", outcome="success", reason="") == 1
    assert value(m, "keygate_audit_events_total", action="key.create", outcome="success", reason="") == 2
    assert "127.0.0.1" not in m


def test_caches_queues_and_error_counters_are_exported(observed: Observed) -> None:
    m = observed.metrics
    for cache in ("keys", "sessions", "users"):
        assert value(m, "keygate_cache_lookups_total", cache=cache, result="hit") + value(
            m, "keygate_cache_lookups_total", cache=cache, result="miss") > 0, cache
    assert value(m, "keygate_cache_lookups_total", cache="sessions", result="hit") >= 2  # GetUserInfo x3 on one token
    for queue in ("audit", "session_writes", "key_last_used"):
        assert ("keygate_queue_depth", frozenset({("queue", queue)})) in samples(m), queue
    assert {"keygate_database_errors_total", "keygate_redis_errors_total"} <= metric_names(m)


def test_no_secret_token_or_password_in_metrics_or_logs(observed: Observed) -> None:
    log = observed.server.log()
    assert len(observed.secrets) == 9
    for name, secret_value in observed.secrets.items():
        # Not even a piece: the websockets library's debug trace once logged the tail of a password.
        for piece in {secret_value[i:i + 12] for i in range(len(secret_value) - 11)}:
            assert piece not in observed.metrics, f"part of {name} appears in /metrics: {piece}"
            assert piece not in log, f"part of {name} appears in the server's log: {piece}"
    assert observed.api_key not in observed.metrics


def test_json_log_lines(observed: Observed) -> None:
    lines = [line for line in observed.server.log().splitlines() if line.startswith("{")]
    assert lines, observed.server.log()
    for line in lines:
        entry = json.loads(line)
        assert {"time", "level", "logger", "message"} <= entry.keys(), entry
    assert any(json.loads(line)["logger"].startswith("uvicorn") for line in lines)


def test_request_id_is_echoed_and_bounded(observed: Observed) -> None:
    base = observed.server.base_url
    assert httpx.get(f"{base}/AP/Ping", headers={"X-Request-Id": "edge-42:a.b_c"}).headers["x-request-id"] == "edge-42:a.b_c"
    for insane in ("x" * 65, "has space", "new\tline", "é"):
        got = httpx.get(f"{base}/AP/Ping", headers={"X-Request-Id": insane.encode()}).headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{16}", got), got
    made = {httpx.get(f"{base}/AP/Ping").headers["x-request-id"] for _ in range(3)}
    assert len(made) == 3 and all(re.fullmatch(r"[0-9a-f]{16}", v) for v in made)


# ----- the Grafana dashboard ----------------------------------------------------------------------
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"


def _queries(dashboard: dict) -> list[str]:  # type: ignore[type-arg]
    exprs = []
    for panel in dashboard["panels"]:
        for sub in [panel, *panel.get("panels", [])]:
            exprs += [t["expr"] for t in sub.get("targets", []) if t.get("expr")]
    return exprs


def test_dashboard_is_valid_grafana_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert isinstance(dashboard["title"], str) and dashboard["uid"] and isinstance(dashboard["schemaVersion"], int)
    assert dashboard["panels"], "no panels"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        assert panel["type"] in {"timeseries", "stat", "gauge", "table", "bargauge", "row"}, panel["type"]
        assert {"x", "y", "w", "h"} <= panel["gridPos"].keys()
        if panel["type"] != "row":
            assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}", panel["title"]
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert "datasource" in variables
    for expr in _queries(dashboard):
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr


def test_every_metric_the_dashboard_reads_exists(observed: Observed) -> None:
    live = metric_names(observed.metrics)
    used = {name for expr in _queries(json.loads(DASHBOARD.read_text())) for name in re.findall(r"\bkeygate_[a-z_]+", expr)}
    assert len(used) == 7
    assert used <= live, f"the dashboard reads metrics /metrics does not have: {sorted(used - live)}"


# ----- docs/observability.md ----------------------------------------------------------------------
def test_every_metric_named_in_the_docs_exists(observed: Observed) -> None:
    doc = (ROOT / "docs" / "observability.md").read_text()
    named = set(re.findall(r"`(keygate_[a-z_]+)", doc))
    assert len(named) >= 7
    assert named <= metric_names(observed.metrics), sorted(named - metric_names(observed.metrics))
    documented = set(re.findall(r"`([a-z_]+)`", doc))
    assert ALLOWED_ENDPOINT_LABELS - set(ENDPOINTS) <= documented, "every endpoint label outside the APEX names is documented"
    assert "observability.md" in (ROOT / "README.md").read_text()


# ----- several workers ----------------------------------------------------------------------------
def test_metrics_of_every_worker_add_up(tmp_path: Path) -> None:
    """With ``serve --workers 2`` each worker is a process; /metrics on any of them counts all of them."""
    settings = Settings(data_dir=tmp_path / "data", master_key=base64.b64encode(secrets.token_bytes(32)).decode())
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}, **settings_env(settings),
           "KEYGATE_PORT": str(port), "KEYGATE_HOST": "127.0.0.1", "KEYGATE_LOG_LEVEL": "warning", "TMPDIR": str(tmp)}
    out = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "keygate", "serve", "--workers", "2"], env=env, stdout=out,
                            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(f"{base}/AP/Ping", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        for _ in range(40):  # a new connection each: the kernel spreads them over both workers
            assert httpx.get(f"{base}/AP/Ping", timeout=5).status_code == 200
        time.sleep(1.5)  # each worker adds its counts to the shared files once a second (and at every scrape)
        (folder,) = tmp.glob("keygate-metrics-*")  # the private folder serve made
        assert folder.stat().st_mode & 0o077 == 0
        pids = {p.stem.rsplit("_", 1)[1] for p in folder.glob("counter_*.db")}
        assert len(pids) >= 2, sorted(folder.iterdir())
        figures = []
        for _ in range(6):  # whichever worker answers, it reports the sum
            text = httpx.get(f"{base}/metrics", timeout=5).text
            assert value(text, "keygate_request_duration_seconds_count", endpoint="Ping") >= 41
            assert "python_info" not in text
            figures.append(value(text, "keygate_requests_total", endpoint="Ping", status="200"))
        assert len(set(figures)) == 1 and figures[0] >= 41, figures
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert not list(tmp.glob("keygate-metrics-*")), "serve removes its folder at exit"


def test_a_chosen_metrics_folder_is_emptied_at_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from keygate.cli.main import _metrics_folder

    (tmp_path / "counter_99.db").write_bytes(b"left over")
    (tmp_path / "keep.txt").write_text("not ours")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with _metrics_folder():
        assert not list(tmp_path.glob("*.db")) and (tmp_path / "keep.txt").exists()
    assert tmp_path.exists()


# ----- /metrics behind nginx, as docs/observability.md shows --------------------------------------
def test_the_documented_nginx_rule_keeps_metrics_private(observed: Observed, tmp_path: Path) -> None:
    need(shutil.which("nginx") is not None, "nginx (Debian package nginx)")
    doc = (ROOT / "docs" / "observability.md").read_text()
    snippet = re.search(r"```nginx\n(.*?)```", doc, re.DOTALL).group(1)  # type: ignore[union-attr]
    upstream = observed.server.base_url.removeprefix("http://")
    snippet = snippet.replace("127.0.0.1:8000", upstream)
    public, private = free_port(), free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"""
daemon off;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log;
events {{}}
http {{
    access_log off;
    client_body_temp_path {tmp_path}; proxy_temp_path {tmp_path}; fastcgi_temp_path {tmp_path};
    uwsgi_temp_path {tmp_path}; scgi_temp_path {tmp_path};
    server {{ listen 127.0.0.1:{public}; {snippet} location / {{ proxy_pass http://{upstream}; }} }}
    server {{ listen 127.0.0.1:{private}; {snippet.replace("10.0.0.0/8", "127.0.0.1")} }}
}}
""")
    proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(tmp_path)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{private}/metrics", timeout=1)
                break
            except httpx.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
                time.sleep(0.1)
        assert httpx.get(f"http://127.0.0.1:{public}/metrics").status_code == 403  # 127.0.0.1 is not a Prometheus server
        assert httpx.get(f"http://127.0.0.1:{public}/AP/Ping").status_code == 200
        allowed = httpx.get(f"http://127.0.0.1:{private}/metrics")
        assert allowed.status_code == 200 and "keygate_requests_total" in allowed.text
    finally:
        proc.terminate()
        proc.wait(timeout=10)
