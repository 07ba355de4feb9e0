"""``make bench``: measure keygate's hot paths against ``Ping`` with wrk, on one real server process.

The script builds a fresh data directory (SQLite, or a fresh database on the PostgreSQL server named by
``--database-url``), creates a user and an API key through the service layer, starts one
``python -m keygate serve`` process (one worker) on a free port, and runs wrk against it, one
scenario after the other. The server is pinned to one core and wrk to the other when ``taskset``
exists, so that the load generator does not compete with the server for a CPU.

It prints requests per second, p50/p99 latency and each scenario's ratio to ``Ping``, checks the
targets, and writes everything to ``bench/results/latest.json``. Exit status 1 means a target was
missed or a scenario answered errors.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import inspect
import json
import os
import platform
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from keygate.config import Settings  # noqa: E402
from keygate.domain.iprules import IpAllowlist  # noqa: E402
from keygate.domain.signature import compute_signature  # noqa: E402
from keygate.service import Keygate  # noqa: E402
from keygate.service.principal import OPERATOR  # noqa: E402

WRK = shutil.which("wrk") or "/usr/bin/wrk"
TASKSET = shutil.which("taskset")
RESULTS = ROOT / "bench" / "results" / "latest.json"
NONCE = "1700000000000"  # fixed: the key is created in the replay mode that accepts a repeat
TARGETS = {"GetUserInfo (aptoken)": 0.85, "GetUserInfo (signed request)": 0.75, "AuthenticateUser": 0.5}

LUA = """
wrk.method = "GET"
wrk.path = %(path)s
wrk.headers = %(headers)s

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_JSON {\\"requests\\":%%d,\\"duration_us\\":%%d,\\"status_errors\\":%%d,\\"socket_errors\\":%%d,"
    .. "\\"p50_us\\":%%d,\\"p90_us\\":%%d,\\"p99_us\\":%%d,\\"mean_us\\":%%.1f,\\"max_us\\":%%d}\\n",
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
"""


@dataclass
class Scenario:
    name: str
    path: str
    headers: dict[str, str]


@dataclass
class Result:
    name: str
    requests_per_second: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    requests: int
    status_errors: int
    socket_errors: int
    server_cpu_percent: float
    server_cpu_us_per_request: float
    wrk_cpu_percent: float
    ratio_to_ping: float | None = None  # median over the rounds of (this round's req/s / this round's Ping req/s)
    ratios_per_round: list[float] | None = None
    cpu_ratio_to_ping: float | None = None  # Ping's server CPU per request / this one's: the ratio on an idle machine
    target: float | None = None
    verdict: str | None = None


# ----- setup ------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fresh_postgres_database(server_url: str) -> tuple[str, str, str]:
    """Create an empty database on the server of ``server_url``; return (url, admin dsn, name)."""
    import asyncpg

    plain = server_url.replace("postgresql+asyncpg://", "postgresql://").replace("postgres://", "postgresql://")
    admin_dsn = plain
    name = f"keygate_bench_{secrets.token_hex(6)}"

    async def create() -> None:
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    return plain.rsplit("/", 1)[0] + "/" + name, admin_dsn, name


def drop_postgres_database(admin_dsn: str, name: str) -> None:
    import asyncpg

    async def drop() -> None:
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(drop())


async def create_user_and_key(settings: Settings) -> tuple[int, str, str]:
    """Through the service layer, as an operator would: a user, and a read-only key with no IP rule."""
    kg = Keygate(settings)
    try:
        await kg.start()
        user = await kg.users.create(OPERATOR, f"bench{secrets.token_hex(4)}", secrets.token_urlsafe(16), "bench@example.com")
        options: dict[str, Any] = {}
        if "replay_mode" in inspect.signature(kg.keys.create).parameters:
            # A key that accepts a repeated nonce (APEX's own behaviour), so one signed header set
            # can be replayed by wrk. The other modes add a nonce check on the signed paths.
            from keygate.domain.replay import ReplayMode

            options["replay_mode"] = ReplayMode.COMPATIBLE
        created = await kg.keys.create(OPERATOR, user.user_id, frozenset(), IpAllowlist(), "bench", **options)
        return user.user_id, created.key.api_key, created.secret
    finally:
        await kg.close()


def pinned(cpu: int | None, argv: list[str]) -> list[str]:
    return [TASKSET, "-c", str(cpu), *argv] if TASKSET and cpu is not None else argv


def start_server(settings: Settings, port: int, cpu: int | None, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "KEYGATE_DATA_DIR": str(settings.data_dir),
        "KEYGATE_DATABASE_URL": settings.resolved_database_url,
        "KEYGATE_MASTER_KEY": settings.master_key or "",
        "KEYGATE_HOST": "127.0.0.1",
        "KEYGATE_PORT": str(port),
        "KEYGATE_LOG_LEVEL": "warning",
    }
    out = log.open("wb")
    proc = subprocess.Popen(pinned(cpu, [sys.executable, "-m", "keygate", "serve"]), env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"keygate server exited early:\n{log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/AP/Ping", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"keygate server did not start:\n{log.read_text()}")


def scenarios(base_url: str, user_id: int, api_key: str, secret: str) -> list[Scenario]:
    signed = {
        "APIKey": api_key,
        "Signature": compute_signature(secret, NONCE, user_id, api_key),
        "UserId": str(user_id),
        "Nonce": NONCE,
    }
    reply = httpx.get(f"{base_url}/AP/AuthenticateUser", headers=signed, timeout=10)
    body = reply.json()
    if reply.status_code != 200 or not body.get("Authenticated"):
        raise SystemExit(f"AuthenticateUser failed during setup: {reply.status_code} {body}")
    token = body["SessionToken"]
    found = [
        Scenario("Ping", "/AP/Ping", {}),
        Scenario("GetUserInfo (aptoken)", "/AP/GetUserInfo", {"aptoken": token}),
        Scenario("GetUserInfo (signed request)", "/AP/GetUserInfo", signed),
        Scenario("AuthenticateUser", "/AP/AuthenticateUser", signed),
    ]
    for sc in found:  # every scenario must answer 200 before it is worth measuring
        r = httpx.get(base_url + sc.path, headers=sc.headers, timeout=10)
        if r.status_code != 200:
            raise SystemExit(f"{sc.name} answered {r.status_code} during setup: {r.text}")
    return found


# ----- measuring --------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, from /proc (0 where /proc is missing)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def lua_script(sc: Scenario, directory: Path) -> Path:
    def lua_str(s: str) -> str:
        return json.dumps(s)  # a JSON string of ASCII is a valid Lua string literal

    headers = "{" + ", ".join(f"[{lua_str(k)}] = {lua_str(v)}" for k, v in sc.headers.items()) + "}"
    path = directory / f"{sc.name.split()[0].lower()}-{secrets.token_hex(3)}.lua"
    path.write_text(LUA % {"path": lua_str(sc.path), "headers": headers})
    return path


def run_wrk(base_url: str, script: Path, seconds: float, connections: int, cpu: int | None, server_pid: int) -> tuple[dict[str, Any], float, float, float]:
    """Run wrk once; return its summary, the server's CPU use (percent of one core, and microseconds
    per request) and wrk's CPU use (percent of one core)."""
    argv = pinned(cpu, [WRK, "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "-s", str(script), base_url])
    server_before, started = cpu_seconds(server_pid), time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wrk_cpu = 0.0
    while proc.poll() is None:
        wrk_cpu = max(wrk_cpu, cpu_seconds(proc.pid))
        time.sleep(0.2)
    output = proc.stdout.read() if proc.stdout else ""
    elapsed = time.monotonic() - started
    server_cpu = cpu_seconds(server_pid) - server_before
    line = next((ln for ln in output.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"wrk failed ({proc.returncode}):\n{output}")
    summary = json.loads(line.split(" ", 1)[1])
    return summary, server_cpu / elapsed * 100, server_cpu / max(summary["requests"], 1) * 1e6, wrk_cpu / elapsed * 100


Run = tuple[dict[str, Any], float, float, float]


def measure_all(base_url: str, plan: list[Scenario], args: argparse.Namespace, work: Path, server_pid: int) -> list[Result]:
    """Warm every scenario up, then run the scenarios in turn, round after round.

    Interleaving the rounds spreads any disturbance on the machine over every scenario, and each
    round's ratios are taken against that same round's ``Ping``; the median round is reported.
    """
    scripts = [lua_script(sc, work) for sc in plan]
    if args.warmup > 0:
        for script in scripts:
            run_wrk(base_url, script, args.warmup, args.connections, args.wrk_cpu, server_pid)
    rounds: list[list[Run]] = []
    for number in range(1, args.rounds + 1):
        runs = [run_wrk(base_url, script, args.duration, args.connections, args.wrk_cpu, server_pid) for script in scripts]
        rounds.append(runs)
        print(f"  round {number}: " + ", ".join(f"{sc.name} {rate(run):.0f}" for sc, run in zip(plan, runs)) + " req/s", flush=True)
    results = []
    for i, sc in enumerate(plan):
        runs = [r[i] for r in rounds]
        ratios = sorted(rate(r[i]) / rate(r[0]) for r in rounds)
        summary, server_cpu, server_cpu_per_request, wrk_cpu = sorted(runs, key=rate)[len(runs) // 2]
        results.append(Result(
            name=sc.name,
            requests_per_second=round(rate(sorted(runs, key=rate)[len(runs) // 2]), 1),
            p50_ms=summary["p50_us"] / 1000,
            p90_ms=summary["p90_us"] / 1000,
            p99_ms=summary["p99_us"] / 1000,
            mean_ms=round(summary["mean_us"] / 1000, 3),
            max_ms=summary["max_us"] / 1000,
            requests=summary["requests"],
            status_errors=sum(r[0]["status_errors"] for r in runs),
            socket_errors=sum(r[0]["socket_errors"] for r in runs),
            server_cpu_percent=round(server_cpu, 1),
            server_cpu_us_per_request=round(server_cpu_per_request, 1),
            wrk_cpu_percent=round(wrk_cpu, 1),
            ratio_to_ping=round(ratios[len(ratios) // 2], 3),
            ratios_per_round=[round(x, 3) for x in ratios],
        ))
    return results


def rate(run: Run) -> float:
    return run[0]["requests"] / (run[0]["duration_us"] / 1e6)


def judge(results: list[Result]) -> bool:
    ok = True
    for r in results:
        r.cpu_ratio_to_ping = round(results[0].server_cpu_us_per_request / r.server_cpu_us_per_request, 3)
        r.target = TARGETS.get(r.name)
        if r.status_errors or r.socket_errors:
            r.verdict, ok = "ERRORS", False
        elif r.target is not None:
            r.verdict = "PASS" if (r.ratio_to_ping or 0) >= r.target else "FAIL"
            ok = ok and r.verdict == "PASS"
    return ok


def table(results: list[Result]) -> str:
    head = f"{'scenario':<30} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'vs Ping':>8} {'target':>7}  {'':<6} {'srv cpu':>7} {'cpu us/req':>10} {'cpu ratio':>9} {'wrk cpu':>7}"
    lines = [head, "-" * len(head)]
    for r in results:
        target = f">={r.target:.2f}" if r.target is not None else ""
        lines.append(
            f"{r.name:<30} {r.requests_per_second:>9.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {r.ratio_to_ping:>8.2f} "
            f"{target:>7}  {r.verdict or '':<6} {r.server_cpu_percent:>6.0f}% {r.server_cpu_us_per_request:>10.0f} {r.cpu_ratio_to_ping:>9.2f} {r.wrk_cpu_percent:>6.0f}%"
        )
    return "\n".join(lines)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--database-url", default="", help="a PostgreSQL server URL (postgresql://user@host:port/db); "
                   "a fresh database is created on that server and dropped afterwards. Default: a temporary SQLite file")
    p.add_argument("--duration", type=float, default=3, help="seconds measured per scenario and round (default 3)")
    p.add_argument("--warmup", type=float, default=2, help="seconds of unmeasured load before each scenario (default 2)")
    p.add_argument("--rounds", type=int, default=10, help="measured rounds of every scenario (default 10); medians are reported")
    p.add_argument("--connections", type=int, default=16, help="concurrent wrk connections (default 16)")
    p.add_argument("--server-cpu", type=int, default=0, help="core the server is pinned to (default 0)")
    p.add_argument("--wrk-cpu", type=int, default=1, help="core wrk is pinned to (default 1)")
    p.add_argument("--output", type=Path, default=RESULTS, help=f"JSON results file (default {RESULTS.relative_to(ROOT)})")
    args = p.parse_args()
    if (os.cpu_count() or 1) < 2:
        args.server_cpu = args.wrk_cpu = None
    return args


def main() -> int:
    args = parse_args()
    if not Path(WRK).exists():
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")
    work = Path(tempfile.mkdtemp(prefix="keygate-bench-"))
    pg: tuple[str, str] | None = None
    server: subprocess.Popen[bytes] | None = None
    try:
        database_url = ""
        if args.database_url:
            database_url, admin_dsn, name = fresh_postgres_database(args.database_url)
            pg = (admin_dsn, name)
        settings = Settings(
            data_dir=work / "data",
            database_url=database_url.replace("postgresql://", "postgresql+asyncpg://", 1),
            master_key=base64.b64encode(os.urandom(32)).decode(),
        )
        user_id, api_key, secret = asyncio.run(create_user_and_key(settings))
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        server = start_server(settings, port, args.server_cpu, work / "server.log")
        plan = scenarios(base_url, user_id, api_key, secret)
        database = "PostgreSQL" if database_url else "SQLite"
        print(f"keygate bench: {database}, one server process on core {args.server_cpu}, wrk -t1 -c{args.connections} on core "
              f"{args.wrk_cpu}, {args.warmup:g}s warm-up, then {args.rounds} rounds of {args.duration:g}s per scenario", flush=True)
        results = measure_all(base_url, plan, args, work, server.pid)
        ok = judge(results)
        print()
        print(table(results))
        print()
        print("all targets met" if ok else "TARGET MISSED (or errors): see the table")
        report = {
            "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, "bench/run.py", *sys.argv[1:]]),
            "database": database,
            "machine": {"cpus": os.cpu_count(), "cpu_model": cpu_model(), "python": platform.python_version(),
                        "kernel": platform.release()},
            "load": {"tool": "wrk", "threads": 1, "connections": args.connections, "duration_seconds": args.duration,
                     "warmup_seconds": args.warmup, "rounds": args.rounds, "server_cpu": args.server_cpu, "wrk_cpu": args.wrk_cpu},
            "targets": TARGETS,
            "all_targets_met": ok,
            "results": [asdict(r) for r in results],
        }
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n")
        print(f"results written to {args.output}")
        return 0 if ok else 1
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
        if pg is not None:
            drop_postgres_database(*pg)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
