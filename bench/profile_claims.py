"""Profile signed calls and AuthenticateUser on a key in the default replay mode (``window``), with
fresh nonces, against ``Ping``, on one real server process.

wrk cannot compute HMAC, so N signed header sets (fresh, increasing nonces) are computed here and
written to a file; the wrk Lua script reads them in ``init`` and sends the next one at each
``request()`` (one wrk thread, so no two requests share a set). Reports, per scenario: requests per
second, the ratio to Ping, non-2xx answers, and the server's CPU microseconds per request (from
/proc/<pid>/stat around the run, as bench/run.py measures them).

    PYTHONPATH=src python bench/profile_claims.py --database sqlite
    PYTHONPATH=src python bench/profile_claims.py --database postgresql --redis redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from keygate.config import Settings
from keygate.domain.iprules import IpAllowlist
from keygate.domain.replay import ReplayMode
from keygate.domain.signature import compute_signature
from keygate.service import Keygate
from keygate.service.principal import OPERATOR

WRK = shutil.which("wrk") or "/usr/bin/wrk"
TASKSET = shutil.which("taskset")

LUA = """
local sets = {}
local i = 0
function init(args)
  for line in io.lines(%(file)s) do
    local k, s, u, n = line:match("([^ ]+) ([^ ]+) ([^ ]+) ([^ ]+)")
    sets[#sets + 1] = {k, s, u, n}
  end
end
function request()
  i = i + 1
  local h = sets[(i - 1) %% #sets + 1]
  if h == nil then return wrk.format("GET", "/AP/Ping") end
  return wrk.format("GET", %(path)s, {APIKey = h[1], Signature = h[2], UserId = h[3], Nonce = h[4]})
end
"""
PING_LUA = 'function request() return wrk.format("GET", "/AP/Ping") end\n'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pinned(cpu: int | None, argv: list[str]) -> list[str]:
    return [TASKSET, "-c", str(cpu), *argv] if TASKSET and cpu is not None else argv


async def make_key(settings: Settings) -> tuple[int, str, str, str, str]:
    kg = Keygate(settings)
    try:
        await kg.start()
        user = await kg.users.create(OPERATOR, f"prof{secrets.token_hex(4)}", secrets.token_urlsafe(16), "p@example.com")
        created = await kg.keys.create(OPERATOR, user.user_id, frozenset(), IpAllowlist(), "profile", replay_mode=ReplayMode.WINDOW)
        old = await kg.keys.create(OPERATOR, user.user_id, frozenset(), IpAllowlist(), "apex", replay_mode=ReplayMode.COMPATIBLE)
        return user.user_id, created.key.api_key, created.secret, old.key.api_key, old.secret
    finally:
        await kg.close()


def run_wrk(base_url: str, script: Path, seconds: float, connections: int, cpu: int | None, pid: int) -> dict[str, float]:
    argv = pinned(cpu, [WRK, "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "-s", str(script), base_url])
    before = cpu_seconds(pid)
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    used = cpu_seconds(pid) - before
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": requests / seconds, "requests": requests, "non2xx": int(bad.group(1)) if bad else 0,
            "cpu_us": used / max(requests, 1) * 1e6, "errors": errors.group(1) if errors else ""}  # type: ignore[dict-item]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    p.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    p.add_argument("--redis", default=None)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--sets", type=int, default=40_000)
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--wrk-cpu", type=int, default=1)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kg-claims-"))
    dbname = None
    if args.database == "sqlite":
        url = f"sqlite+aiosqlite:///{work / 'keygate.db'}"
    else:
        import asyncpg

        dbname = f"keygate_prof_{secrets.token_hex(5)}"

        async def create() -> None:
            conn = await asyncpg.connect(args.postgres)
            await conn.execute(f'CREATE DATABASE "{dbname}"')
            await conn.close()

        asyncio.run(create())
        url = args.postgres.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://") + "/" + dbname
    master = base64.b64encode(secrets.token_bytes(32)).decode()
    namespace = f"kgprof{secrets.token_hex(3)}"
    settings = Settings(data_dir=work, database_url=url, master_key=master, redis_url=args.redis, redis_namespace=namespace)
    uid, api_key, secret, compat_key, compat_secret = asyncio.run(make_key(settings))
    port = free_port()
    env = {**os.environ, "KEYGATE_DATA_DIR": str(work), "KEYGATE_DATABASE_URL": url, "KEYGATE_MASTER_KEY": master,
           "KEYGATE_HOST": "127.0.0.1", "KEYGATE_PORT": str(port), "KEYGATE_LOG_LEVEL": "warning",
           "KEYGATE_REDIS_URL": args.redis or "", "KEYGATE_REDIS_NAMESPACE": namespace}
    log = (work / "server.log").open("wb")
    server = subprocess.Popen(pinned(args.server_cpu, [sys.executable, "-m", "keygate", "serve"]), env=env, stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(base_url + "/AP/Ping", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        nonce = int(time.time() * 1000)
        scripts = {"Ping": work / "ping.lua", "signed, compatible key": work / "compatible.lua"}
        scripts["Ping"].write_text(PING_LUA)
        (work / "compatible.txt").write_text(f"{compat_key} {compute_signature(compat_secret, '1', uid, compat_key)} {uid} 1\n")
        scripts["signed, compatible key"].write_text(LUA % {"file": json.dumps(str(work / "compatible.txt")), "path": '"/AP/GetUserInfo"'})
        for name, path in (("signed GetUserInfo", "/AP/GetUserInfo"), ("AuthenticateUser", "/AP/AuthenticateUser")):
            for r in range(args.rounds + 1):  # fresh sets for the warm-up and every round
                lines = []
                for _ in range(args.sets):
                    nonce += 1
                    lines.append(f"{api_key} {compute_signature(secret, str(nonce), uid, api_key)} {uid} {nonce}\n")
                data = work / f"{name.split()[-1]}-{r}.txt"
                data.write_text("".join(lines))
                (work / f"{name.split()[-1]}-{r}.lua").write_text(LUA % {"file": json.dumps(str(data)), "path": json.dumps(path)})
            scripts[name] = work / f"{name.split()[-1]}-%d.lua"
        results: dict[str, list[dict[str, float]]] = {name: [] for name in scripts}
        for name, script in scripts.items():  # warm-up
            run_wrk(base_url, Path(str(script).replace("%d", "0")), 1.0, args.connections, args.wrk_cpu, server.pid)
        for r in range(1, args.rounds + 1):
            for name, script in scripts.items():
                results[name].append(run_wrk(base_url, Path(str(script).replace("%d", str(r))), args.duration,
                                             args.connections, args.wrk_cpu, server.pid))
        ping = sorted(x["rps"] for x in results["Ping"])[len(results["Ping"]) // 2]
        config = args.database + (" + Redis" if args.redis else "")
        print(f"{config}: wrk -t1 -c{args.connections}, {args.rounds} rounds of {args.duration:g} s (median round)")
        print(f"{'scenario':<22} {'req/s':>8} {'vs Ping':>8} {'cpu us/req':>10} {'non-2xx':>8}")
        for name, runs in results.items():
            m = sorted(runs, key=lambda x: x["rps"])[len(runs) // 2]
            print(f"{name:<22} {m['rps']:>8.0f} {m['rps'] / ping:>8.2f} {m['cpu_us']:>10.0f} {int(m['non2xx']):>8} {m['errors']}")
    finally:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
        if dbname:
            async def drop() -> None:
                conn = await asyncpg.connect(args.postgres)
                await conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
                await conn.close()

            asyncio.run(drop())
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
