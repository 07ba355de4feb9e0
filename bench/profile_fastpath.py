"""Quick measure of the HTTP framework's cost per request: keygate's APEX surface and forward auth
against a bare Starlette hello on the same uvicorn settings (uvloop + httptools, one worker, access
log off), in one session.

    PYTHONPATH=src python bench/profile_fastpath.py [--rounds 3] [--duration 3] [--profile out.prof]
    FASTPATH_SRC=/path/to/other/checkout/src python bench/profile_fastpath.py   # that checkout's code

For every scenario it prints requests per second and the server's CPU microseconds per request (from
/proc, robust against other load on the machine), and the ratios the issue names: GetUserInfo
(aptoken) to the bare Starlette hello, forward auth (aptoken) to keygate's Ping. Both are computed
from CPU per request (``cpu``) and from requests per second (``rps``). The server is pinned to core 0
and wrk to core 1 when ``taskset`` exists. ``--profile FILE`` runs the keygate server under cProfile
and writes its statistics to FILE when the server stops.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
# FASTPATH_SRC: measure another checkout's code (e.g. main's, for a before/after in one session).
SRC = Path(os.environ.get("FASTPATH_SRC") or ROOT / "src")
sys.path.insert(0, str(SRC))

from keygate.config import Settings  # noqa: E402
from keygate.domain.iprules import IpAllowlist  # noqa: E402
from keygate.domain.replay import ReplayMode  # noqa: E402
from keygate.domain.signature import compute_signature  # noqa: E402
from keygate.service import Keygate  # noqa: E402
from keygate.service.principal import OPERATOR  # noqa: E402

WRK = shutil.which("wrk") or "/usr/bin/wrk"
TASKSET = shutil.which("taskset")

HELLO = textwrap.dedent("""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def hello(request):
        return JSONResponse({"msg": "PONG"})

    app = Starlette(routes=[Route("/AP/Ping", hello, methods=["GET", "POST"])])
    uvicorn.run(app, host="127.0.0.1", port=int(__import__("sys").argv[1]), log_level="warning", access_log=False,
                proxy_headers=False)
""")

SERVE_PROFILED = textwrap.dedent("""
    import cProfile, signal, sys
    from keygate.cli.main import app
    profiler, out = cProfile.Profile(), sys.argv[1]
    # uvicorn restores this handler after its shutdown and raises the signal again: it then exits here.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sys.argv = ["keygate", "serve"]
    profiler.enable()
    try:
        app()
    finally:
        profiler.disable()
        profiler.dump_stats(out)
""")

LUA = """
wrk.method = "GET"
wrk.path = %(path)s
wrk.headers = %(headers)s
done = function(summary, latency, requests)
  io.write(string.format("BENCH_JSON {\\"requests\\":%%d,\\"duration_us\\":%%d,\\"errors\\":%%d}\\n",
    summary.requests, summary.duration, summary.errors.status + summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout))
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(cpu: int, argv: list[str]) -> list[str]:
    return [TASKSET, "-c", str(cpu), *argv] if TASKSET else argv


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_up(proc: subprocess.Popen[bytes], url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early ({proc.returncode})")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit("server did not start")


async def user_and_key(settings: Settings) -> tuple[int, str, str]:
    kg = Keygate(settings)
    try:
        await kg.start()
        user = await kg.users.create(OPERATOR, f"bench{secrets.token_hex(4)}", secrets.token_urlsafe(16), "b@example.com")
        # compatible: one header set, replayed by wrk, signs every call of the signed scenario
        created = await kg.keys.create(OPERATOR, user.user_id, frozenset(), IpAllowlist(), "bench",
                                       replay_mode=ReplayMode.COMPATIBLE)
        return user.user_id, created.key.api_key, created.secret
    finally:
        await kg.close()


def wrk(base: str, path: str, headers: dict[str, str], seconds: float, pid: int, work: Path) -> tuple[float, float]:
    """(requests per second, server CPU microseconds per request)."""
    script = work / f"s{secrets.token_hex(3)}.lua"
    hdrs = "{" + ", ".join(f"[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()) + "}"
    script.write_text(LUA % {"path": json.dumps(path), "headers": hdrs})
    before = cpu_seconds(pid)
    out = subprocess.run(pinned(1, [WRK, "-t1", "-c16", f"-d{seconds:g}s", "-s", str(script), base]),
                         capture_output=True, text=True, check=True).stdout
    used = cpu_seconds(pid) - before
    line = next(ln for ln in out.splitlines() if ln.startswith("BENCH_JSON "))
    s = json.loads(line.split(" ", 1)[1])
    if s["errors"]:  # e.g. 503s of a server whose change-log reader was starved on a loaded machine
        print(f"  {path}: {s['errors']} errors (non-2xx or socket) of {s['requests']}", file=sys.stderr)
    return s["requests"] / (s["duration_us"] / 1e6), used / max(s["requests"], 1) * 1e6


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=3)
    p.add_argument("--profile", type=Path, default=None, help="cProfile the keygate server into this file")
    p.add_argument("--only", default="", help="comma-separated scenario names to run (default all)")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="keygate-fastpath-"))
    settings = Settings(data_dir=work / "data", master_key=base64.b64encode(os.urandom(32)).decode())
    user_id, api_key, secret = asyncio.run(user_and_key(settings))
    kport, hport = free_port(), free_port()
    env = {**os.environ, "KEYGATE_DATA_DIR": str(settings.data_dir), "KEYGATE_DATABASE_URL": settings.resolved_database_url,
           "KEYGATE_MASTER_KEY": settings.master_key or "", "KEYGATE_HOST": "127.0.0.1", "KEYGATE_PORT": str(kport),
           "KEYGATE_LOG_LEVEL": "warning", "PYTHONPATH": str(SRC)}
    argv = ([sys.executable, "-c", SERVE_PROFILED, str(args.profile)] if args.profile
            else [sys.executable, "-m", "keygate", "serve"])
    log = work / "server.log"
    kg = subprocess.Popen(pinned(0, argv), env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    hello = subprocess.Popen(pinned(0, [sys.executable, "-c", HELLO, str(hport)]), stdout=subprocess.DEVNULL)
    try:
        kbase, hbase = f"http://127.0.0.1:{kport}", f"http://127.0.0.1:{hport}"
        try:
            wait_up(kg, kbase + "/AP/Ping")
        except SystemExit:
            print(log.read_text(), file=sys.stderr)
            raise
        wait_up(hello, hbase + "/AP/Ping")
        signed = {"APIKey": api_key, "Signature": compute_signature(secret, "1", user_id, api_key),
                  "UserId": str(user_id), "Nonce": "1"}
        token = httpx.get(kbase + "/AP/AuthenticateUser", headers=signed).json()["SessionToken"]
        plan = [
            ("starlette hello", hbase, hello.pid, "/AP/Ping", {}),
            ("Ping", kbase, kg.pid, "/AP/Ping", {}),
            ("GetUserInfo aptoken", kbase, kg.pid, "/AP/GetUserInfo", {"aptoken": token}),
            ("forward auth aptoken", kbase, kg.pid, "/keygate/authorize", {"aptoken": token}),
            ("GetUserInfo signed", kbase, kg.pid, "/AP/GetUserInfo", signed),
        ]
        if args.only:
            keep = set(args.only.split(","))
            plan = [sc for sc in plan if sc[0] in keep]
        for name, base, pid, path, headers in plan:
            r = httpx.get(base + path, headers=headers)
            assert r.status_code == 200, (name, r.status_code, r.text)
            wrk(base, path, headers, 1, pid, work)  # warm-up
        results: dict[str, list[tuple[float, float]]] = {sc[0]: [] for sc in plan}
        for _ in range(args.rounds):
            for name, base, pid, path, headers in plan:
                results[name].append(wrk(base, path, headers, args.duration, pid, work))
        med = {}
        print(f"{'scenario':<24} {'req/s':>8} {'cpu us/req':>10}")
        for name, runs in results.items():
            rps = sorted(r[0] for r in runs)[len(runs) // 2]
            cpu = sorted(r[1] for r in runs)[len(runs) // 2]
            med[name] = (rps, cpu)
            print(f"{name:<24} {rps:>8.0f} {cpu:>10.1f}   rounds: " + ", ".join(f"{r[0]:.0f}/{r[1]:.0f}" for r in runs))

        def ratio(a: str, b: str) -> str:
            if a not in med or b not in med:
                return "n/a"
            return f"cpu {med[b][1] / med[a][1]:.2f}, rps {med[a][0] / med[b][0]:.2f}"

        print(f"Ping / starlette hello:                 {ratio('Ping', 'starlette hello')}")
        print(f"GetUserInfo aptoken / starlette hello:  {ratio('GetUserInfo aptoken', 'starlette hello')}  (target >= 0.6)")
        print(f"forward auth aptoken / Ping:            {ratio('forward auth aptoken', 'Ping')}  (target >= 0.8)")
        print(f"GetUserInfo signed (compatible) / Ping: {ratio('GetUserInfo signed', 'Ping')}")
        return 0
    finally:
        kg.terminate()
        hello.terminate()
        for proc in (kg, hello):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
