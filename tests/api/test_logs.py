"""JSON logs: a request's id on every line written while serving it, uvicorn's error lines included."""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from keygate.config import InvalidSetting, Settings
from keygate.logs import JsonFormatter, log_config
from support import free_port

# A keygate app with one extra route that logs and then fails, served by uvicorn with keygate's
# logging set-up, exactly as `keygate serve` passes it.
SCRIPT = """
import logging, sys, uvicorn
from starlette.requests import Request
from keygate.api import create_app
from keygate.config import InvalidSetting, Settings
from keygate.logs import log_config

app = create_app(Settings.from_env())

async def boom(request: Request):
    logging.getLogger("keygate.test").warning("about to fail")
    raise RuntimeError("boom")

app.add_api_route("/boom", boom, methods=["GET"])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_config=log_config(sys.argv[2], "info"), access_log=False)
"""


def _serve(tmp_path: Path, log_format: str) -> tuple[subprocess.Popen[str], str, Path]:
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("KEYGATE_")},
           "KEYGATE_DATA_DIR": str(tmp_path), "KEYGATE_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode()}
    log = tmp_path / "server.log"
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(port), log_format], env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        try:
            httpx.get(f"{base}/AP/Ping", timeout=1)
            return proc, base, log
        except httpx.HTTPError:
            time.sleep(0.1)


def test_every_line_of_a_failing_request_carries_its_id(tmp_path: Path) -> None:
    proc, base, log = _serve(tmp_path, "json")
    try:
        r = httpx.get(f"{base}/boom", headers={"X-Request-Id": "trace-7f3a"})
        assert r.status_code == 500 and r.json()["errorcode"] == 102 and "Traceback" not in r.text
        assert r.headers["x-request-id"] == "trace-7f3a"
        other = httpx.get(f"{base}/boom")  # a second failing request: its own id, not the first one's
        time.sleep(0.3)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    entries = [json.loads(line) for line in log.read_text().splitlines()]  # every line is JSON
    ours = [e for e in entries if e.get("request_id") == "trace-7f3a"]
    assert {e["logger"] for e in ours} == {"keygate.test", "keygate.api", "uvicorn.error"}, entries
    crash = next(e for e in ours if e["logger"] == "uvicorn.error")
    assert crash["message"].strip() == "Exception in ASGI application" and "RuntimeError: boom" in crash["exception"]
    theirs = {e["logger"] for e in entries if e.get("request_id") == other.headers["x-request-id"]}
    assert theirs == {"keygate.test", "keygate.api", "uvicorn.error"}
    # Lines outside any request (start-up, shutdown) carry no id.
    assert any(e["message"].startswith("Started server process") and "request_id" not in e for e in entries)


def test_text_stays_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KEYGATE_LOG_FORMAT", raising=False)
    assert Settings.from_env().log_format == "text"
    proc, base, log = _serve(tmp_path, "text")
    try:
        assert re.fullmatch(r"[0-9a-f]{16}", httpx.get(f"{base}/boom").headers["x-request-id"])
        time.sleep(0.3)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    text = log.read_text()
    assert "Exception in ASGI application" in text and not text.lstrip().startswith("{")


def test_log_format_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYGATE_LOG_FORMAT", "JSON")
    assert Settings.from_env().log_format == "json"
    monkeypatch.setenv("KEYGATE_LOG_FORMAT", "xml")
    with pytest.raises(InvalidSetting, match="KEYGATE_LOG_FORMAT='xml' is refused: it accepts text or json"):
        Settings.from_env()


def test_json_formatter_escapes_what_a_message_holds() -> None:
    import logging

    record = logging.LogRecord("keygate", logging.ERROR, __file__, 1, 'line one\nline "two"', None, None)
    line = JsonFormatter().format(record)
    assert "\n" not in line and json.loads(line)["message"] == 'line one\nline "two"'
    assert log_config("json", "info")["formatters"]["default"]["()"] == "keygate.logs.JsonFormatter"
