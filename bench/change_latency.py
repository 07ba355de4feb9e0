"""How long a change made on one server takes to be enforced on another: p50 and p99 over many changes.

For each deployment (SQLite, PostgreSQL, PostgreSQL with Redis) the script starts two real
``keygate serve`` processes, A and B, on one fresh database, and a user with a key. Then, for each of
``--changes`` rounds (default 50 of each kind):

- **permission**: a key session on B is polled every ``--poll`` seconds (default 5 ms) with
  ``GetUserPermissions``; the owner removes ``Withdraw`` from the key through A's
  ``UpdateUserAPIKey``; the time from A's reply to B's first answer without ``Withdraw`` is one figure
  (then ``Withdraw`` is given back, unmeasured);
- **logout**: a password session made on B is logged out on A; the time from A's reply to B's first
  401 is one figure.

It prints p50, p99 and the maximum per deployment and kind, and writes them to
``bench/results/change_latency.json``. Usage::

    .venv/bin/python bench/change_latency.py [--changes 50] [--deployments sqlite,postgresql,postgresql+redis]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from keygate.domain.signature import compute_signature  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "change_latency.json"
PG = "postgresql://postgres@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379/0"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(env: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "keygate", "serve"], env={**env, "KEYGATE_PORT": str(port)},
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/AP/Ping", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"a server did not start; see {log}")


def psql(sql: str) -> None:
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(PG)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def measure(a: str, b: str, username: str, password: str, changes: int, poll: float) -> dict[str, list[float]]:
    async with httpx.AsyncClient(base_url=a, timeout=30) as on_a, httpx.AsyncClient(base_url=b, timeout=30) as on_b:
        owner = (await on_a.post("/AP/AuthenticateUser", json={"UserName": username, "Password": password})).json()["SessionToken"]
        r = await on_a.post("/AP/AddUserAPIKey", headers={"aptoken": owner},
                            json={"Permissions": ["Trading", "Withdraw"], "ReplayMode": "unique"})
        key = r.json()
        uid, api_key, secret = int(key["UserId"]), key["APIKey"], key["APISecret"]
        nonce = str(secrets.randbelow(10**12))
        sig = compute_signature(secret, nonce, uid, api_key)
        r = await on_b.post("/AP/AuthenticateUser", headers={"APIKey": api_key, "Signature": sig, "UserId": str(uid), "Nonce": nonce})
        key_token = r.json()["SessionToken"]
        out: dict[str, list[float]] = {"permission": [], "logout": []}

        async def until(predicate: Any, headers: dict[str, str], since: float) -> float:
            while True:
                r = await on_b.get("/AP/GetUserPermissions", headers=headers)
                if predicate(r):
                    return time.perf_counter() - since
                if time.perf_counter() - since > 10:
                    raise SystemExit("a change was not enforced within 10 s")
                await asyncio.sleep(poll)

        for _ in range(changes):
            r = await on_a.post("/AP/UpdateUserAPIKey", headers={"aptoken": owner}, json={"APIKey": api_key, "Permissions": ["Trading"]})
            assert r.status_code == 200, r.text
            done = time.perf_counter()
            out["permission"].append(await until(lambda r: r.status_code == 200 and "Withdraw" not in r.json(),
                                                 {"aptoken": key_token}, done))
            await on_a.post("/AP/UpdateUserAPIKey", headers={"aptoken": owner}, json={"APIKey": api_key, "Permissions": ["Trading", "Withdraw"]})
            await until(lambda r: r.status_code == 200 and "Withdraw" in r.json(), {"aptoken": key_token}, time.perf_counter())

            victim = (await on_b.post("/AP/AuthenticateUser", json={"UserName": username, "Password": password})).json()["SessionToken"]
            assert (await on_b.get("/AP/GetUserPermissions", headers={"aptoken": victim})).status_code == 200
            r = await on_a.post("/AP/LogOut", headers={"aptoken": victim})
            assert r.status_code == 200, r.text
            done = time.perf_counter()
            out["logout"].append(await until(lambda r: r.status_code == 401, {"aptoken": victim}, done))
        return out


def run_deployment(kind: str, changes: int, poll: float) -> dict[str, Any]:
    data = Path(tempfile.mkdtemp(prefix=f"keygate-change-{kind.replace('+', '-')}-"))
    env = {**os.environ, "KEYGATE_DATA_DIR": str(data), "KEYGATE_LOG_LEVEL": "warning",
           "KEYGATE_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
           "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    database = None
    if kind != "sqlite":
        database = f"keygate_change_{uuid.uuid4().hex[:10]}"
        psql(f'CREATE DATABASE "{database}"')
        env["KEYGATE_DATABASE_URL"] = PG.rsplit("/", 1)[0] + "/" + database
    if kind.endswith("redis"):
        env["KEYGATE_REDIS_URL"] = REDIS
        env["KEYGATE_REDIS_NAMESPACE"] = f"kgbench{secrets.token_hex(4)}"
    username, password = "trader", secrets.token_urlsafe(16)
    subprocess.run([sys.executable, "-m", "keygate", "init"], env=env, check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "keygate", "user", "create", username, "--password-stdin"], env=env, check=True,
                   input=(password + "\n").encode(), capture_output=True)
    servers = [start(env, data / "a.log"), start(env, data / "b.log")]
    try:
        figures = asyncio.run(measure(servers[0][1], servers[1][1], username, password, changes, poll))
    finally:
        for proc, _ in servers:
            proc.terminate()
            proc.wait(10)
        if database:
            psql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    return {name: {"n": len(v), "p50_ms": round(1000 * statistics.median(v), 1), "p99_ms": round(1000 * percentile(v, 0.99), 1),
                   "max_ms": round(1000 * max(v), 1)} for name, v in figures.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--changes", type=int, default=50)
    parser.add_argument("--poll", type=float, default=0.005)
    parser.add_argument("--deployments", default="sqlite,postgresql,postgresql+redis")
    args = parser.parse_args()
    results = {}
    print(f"{'deployment':<18} {'change':<11} {'n':>4} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for kind in args.deployments.split(","):
        results[kind] = run_deployment(kind, args.changes, args.poll)
        for name, f in results[kind].items():
            print(f"{kind:<18} {name:<11} {f['n']:>4} {f['p50_ms']:>8} {f['p99_ms']:>8} {f['max_ms']:>8}", flush=True)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "poll_seconds": args.poll,
                                   "results": results}, indent=2) + "\n")
    print(f"written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
