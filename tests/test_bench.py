"""``make bench`` itself works: bench/run.py, run for real with tiny durations, prints its tables and
writes its JSON. The figures are not judged here (a loaded test machine would miss every target):
what is checked is that every scenario, ratio and target is measured and reported.

One run of about 20 s (SQLite only, one round of 1 s per scenario, short WebSocket and CLI runs).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support import need

pytestmark = pytest.mark.serial  # runs the benchmark: alone, on a quiet machine

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = [
    "Ping", "bare Starlette hello", "GetUserInfo (aptoken)", "forward auth /keygate/authorize (aptoken)",
    "GetUserInfo signed, compatible key (fixed nonce)", "GetUserInfo signed, default mode (fresh nonces)",
    "AuthenticateUser, default mode (fresh nonces)", "AuthenticateUser, compatible key",
    "AuthenticateUser, Ed25519 key (fresh nonces)", "GetUserInfo, Signature v2 (RFC 9421, HMAC key)",
]


def test_bench_runs_every_scenario_and_reports_ratios_and_targets(tmp_path: Path) -> None:
    need(shutil.which("wrk") is not None or Path("/usr/bin/wrk").exists(), "wrk")
    out = tmp_path / "latest.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYGATE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--duration", "0.5", "--warmup", "0", "--rounds", "1", "--only", "sqlite",
         "--ws-duration", "0.3", "--cli-runs", "1", "--output", str(out)],
        capture_output=True, text=True, timeout=120, env=env, cwd=ROOT,
    )
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]  # 1: a target missed on a loaded machine
    text = proc.stdout
    for name in SCENARIOS:
        assert f"\n{name} " in text, f"{name!r} missing from the table:\n{text}"
    assert "summary:" in text and "WebSocket AuthenticateUser" in text and "WebSocket GetUserInfo" in text
    for line in text.splitlines():  # every target has a verdict in the summary
        if line.startswith("sqlite ") and " / " in line:
            assert line.rstrip().endswith(("PASS", "FAIL", "ERRORS")), line

    report = json.loads(out.read_text())
    config = report["configurations"]["sqlite"]
    results = {r["name"]: r for r in config["results"]}
    assert list(results) == SCENARIOS
    for r in results.values():
        assert r["requests"] > 0 and r["ratio_to_ping"] > 0 and r["ratio_to_hello"] > 0
        # The fresh-nonce feeds never ran out, and no nonce was refused as a replay.
        assert r["feed_wrapped"] == 0 and r["status_errors"] == 0 and r["socket_errors"] == 0, r
    assert results["Ping"]["ratio_to_ping"] == 1.0
    checks = {c["what"]: c for c in config["checks"]}
    for scenario, reference, minimum in [(t["scenario"], t["reference"], t["minimum"]) for t in report["targets"]["ratios"]]:
        check = checks[f"{scenario} / {reference}"]
        assert check["target"] == f">= {minimum:.2f}" and check["verdict"] in ("PASS", "FAIL") and check["figure"] > 0
    assert {t["scenario"] for t in report["targets"]["ratios"]} == {
        "GetUserInfo signed, default mode (fresh nonces)", "AuthenticateUser, default mode (fresh nonces)",
        "forward auth /keygate/authorize (aptoken)", "GetUserInfo (aptoken)",
        "GetUserInfo, Signature v2 (RFC 9421, HMAC key)"}
    ws = {(w["endpoint"], w["connections"]): w for w in config["websocket"]}
    assert set(ws) == {("AuthenticateUser", 1), ("AuthenticateUser", 16), ("GetUserInfo", 1), ("GetUserInfo", 16)}
    assert all(w["frames"] > 0 and w["errors"] == 0 for w in ws.values()), ws
    assert config["cli"]["median_seconds"] > 0
    assert config["startup_seconds"] > 0 and config["rss_after_load_mb"] > 0
    assert report["all_targets_met"] == (proc.returncode == 0)


def test_bench_without_wrk_says_what_to_install_and_exits_2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYGATE_")}
    env.update(BENCH_WRK=str(tmp_path / "no-wrk-here"), PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--output", str(tmp_path / "x.json")],
                          capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "needs wrk, which is not installed" in proc.stderr and "wrk" in proc.stderr.split("run `", 1)[1]
    assert not (tmp_path / "x.json").exists()
