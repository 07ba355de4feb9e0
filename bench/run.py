"""``make bench``: measure keygate's hot paths against ``Ping`` and a bare Starlette hello, with wrk.

One run measures two configurations, one after the other: SQLite (a fresh data directory) and
PostgreSQL + Redis (a fresh database on the PostgreSQL server, a fresh Redis namespace). For each, it
creates a user and API keys through the service layer, starts one ``python -m keygate serve`` process
(one worker) pinned to one core and a bare Starlette hello on the same uvicorn settings, and runs wrk
(one thread, 16 connections) pinned to the other core: every scenario in turn, round after round.
Signed scenarios on keys in the default replay mode get fresh nonces, precomputed in Python and fed
to wrk's Lua script (``bench/wrkload.py``). Then WebSocket frames per second (``bench/wsload.py``),
the CLI's wall time, and with ``--scale N`` the same calls with N keys and N sessions in the store.

It prints one table per configuration and a summary of every target, and writes everything to
``bench/results/latest.json``. Exit status 1: a target was missed or a scenario answered errors;
2: the machine lacks something the bench needs (the message says what to install).
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
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(BENCH))

RESULTS = BENCH / "results" / "latest.json"
SQLITE, PGREDIS = "sqlite", "postgresql+redis"
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
FIXED_NONCE = "1700000000000"  # the compatible key accepts a repeat: one header set, replayed by wrk
BASE_KEYS = 1000  # the "1,000 keys" the --scale figures are compared with

PING, HELLO = "Ping", "bare Starlette hello"
APTOKEN, FORWARD = "GetUserInfo (aptoken)", "forward auth /keygate/authorize (aptoken)"
SIGNED_COMPAT, SIGNED_DEFAULT = "GetUserInfo signed, compatible key (fixed nonce)", "GetUserInfo signed, default mode (fresh nonces)"
AUTH_DEFAULT, AUTH_COMPAT = "AuthenticateUser, default mode (fresh nonces)", "AuthenticateUser, compatible key"
ED25519_AUTH, V2_SIGNED = "AuthenticateUser, Ed25519 key (fresh nonces)", "GetUserInfo, Signature v2 (RFC 9421, HMAC key)"
SCENARIOS = [PING, HELLO, APTOKEN, FORWARD, SIGNED_COMPAT, SIGNED_DEFAULT, AUTH_DEFAULT, AUTH_COMPAT, ED25519_AUTH, V2_SIGNED]

# (scenario, reference scenario, minimum ratio): checked on every configuration.
RATIO_TARGETS = [
    (SIGNED_DEFAULT, PING, 0.75),
    (AUTH_DEFAULT, PING, 0.5),
    (FORWARD, PING, 0.8),
    (APTOKEN, HELLO, 0.6),
    (V2_SIGNED, PING, 0.7),
]
# Signature v2 rows carry ``created``: made in under a second (about 10 us each, from a template), so that
# the last one used in a 3 s run is still inside the default 5 s window (a run that needs more would show
# "feed ran out" errors: 25 000 rows did, at 8 200 v2 calls a second). Ed25519 rows take ~60 us each to
# sign: their own cap keeps that feed quick to make.
V2_MAX_ROWS = 80_000
ED25519_MAX_ROWS = 25_000
V2_WINDOW_SECONDS = [5]  # the default; a run longer than 3 s needs more (its v2 rows are made before it)
SCALE_P99_TOLERANCE = 0.10  # p99 at --scale within 10 % of the figure with 1,000 keys
VIEW_SECONDS = 0.2  # every operator page and search
CLI_SECONDS = 0.5  # keygate key list --user U, wall time


def need_tools() -> None:
    """Exit 2, saying what to install, when wrk is missing (``make bench`` installs it where it can)."""
    from wrkload import TASKSET, WRK

    if not TASKSET:
        print("note: taskset (util-linux) not found: servers and load generator are not pinned to cores", file=sys.stderr)
    if not Path(WRK).exists():
        hint = "apt-get install -y wrk" if shutil.which("apt-get") else "install wrk (https://github.com/wg/wrk) so that `wrk` is on PATH"
        print(f"keygate bench needs wrk, which is not installed: run `{hint}` (as root), then `make bench` again", file=sys.stderr)
        raise SystemExit(2)


import httpx  # noqa: E402

from keygate.config import Settings  # noqa: E402
from keygate.domain.iprules import IpAllowlist  # noqa: E402
from keygate.domain.signature import compute_signature  # noqa: E402
from keygate.service import Keygate  # noqa: E402
from keygate.service.principal import OPERATOR  # noqa: E402
from wrkload import SIGNED_COLUMNS, V2_COLUMNS, Ed25519Key, Feed, Run, Scenario, SignedKey, V2Key, pinned, rss_bytes, run_wrk  # noqa: E402

# ----- configurations -----------------------------------------------------------------------------

@dataclass
class Deployment:
    name: str
    settings: Settings
    env: dict[str, str]
    cleanup: list[Any] = field(default_factory=list)
    describe: str = ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def plain_pg(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://").replace("postgres://", "postgresql://", 1)


def reachable(pg_url: str, redis_url: str) -> str | None:
    """None if both servers answer, else what is wrong, in a sentence."""
    import asyncpg
    import redis

    problems = []

    async def pg() -> None:
        conn = await asyncpg.connect(plain_pg(pg_url), timeout=3)
        await conn.close()

    try:
        asyncio.run(pg())
    except Exception as exc:  # any failure to connect: say which server and why
        problems.append(f"PostgreSQL at {pg_url} is unreachable ({type(exc).__name__}: {str(exc)[:120]})")
    try:
        redis.Redis.from_url(redis_url, socket_connect_timeout=3, socket_timeout=3).ping()
    except Exception as exc:
        problems.append(f"Redis at {redis_url} is unreachable ({type(exc).__name__}: {str(exc)[:120]})")
    return "; ".join(problems) or None


def make_deployment(name: str, args: argparse.Namespace, work: Path) -> Deployment:
    master = base64.b64encode(os.urandom(32)).decode()
    data_dir = work / name.replace("+", "-") / "data"
    data_dir.mkdir(parents=True)
    if name == SQLITE:
        settings = Settings(data_dir=data_dir, master_key=master)
        return Deployment(name, settings, {}, describe="SQLite (WAL), fresh data directory")
    import asyncpg
    import redis

    admin = plain_pg(args.database_url)
    db = f"keygate_bench_{secrets.token_hex(6)}"

    async def ddl(sql: str) -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(ddl(f'CREATE DATABASE "{db}"'))
    url = "postgresql+asyncpg://" + admin.split("://", 1)[1].rsplit("/", 1)[0] + "/" + db
    namespace = f"kgbench{secrets.token_hex(4)}"
    settings = Settings(data_dir=data_dir, master_key=master, database_url=url, redis_url=args.redis_url, redis_namespace=namespace)
    dep = Deployment(name, settings, {"KEYGATE_REDIS_URL": args.redis_url, "KEYGATE_REDIS_NAMESPACE": namespace},
                     describe=f"PostgreSQL database {db} on {admin.rsplit('/', 1)[0]}, Redis {args.redis_url} namespace {namespace}")

    def drop() -> None:
        asyncio.run(ddl(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))

    def forget() -> None:
        r = redis.Redis.from_url(args.redis_url)
        for k in r.scan_iter(f"{namespace}*", count=1000):
            r.delete(k)

    dep.cleanup += [drop, forget]
    return dep


def server_env(dep: Deployment, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYGATE_")}
    env.update({
        "KEYGATE_DATA_DIR": str(dep.settings.data_dir),
        "KEYGATE_DATABASE_URL": dep.settings.resolved_database_url,
        "KEYGATE_MASTER_KEY": dep.settings.master_key or "",
        "KEYGATE_HOST": "127.0.0.1",
        "KEYGATE_PORT": str(port),
        "KEYGATE_LOG_LEVEL": "warning",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]),
        **dep.env,
    })
    if V2_WINDOW_SECONDS[0] > 5:  # only for runs longer than the default window allows (--duration > 3)
        env["KEYGATE_SIGNATURE_WINDOW_SECONDS"] = str(V2_WINDOW_SECONDS[0])
    return env


# ----- what the server holds ----------------------------------------------------------------------

@dataclass
class Fixture:
    user_id: int
    username: str
    admin_username: str
    admin_password: str
    compatible: SignedKey
    signed_default: SignedKey
    auth_default: SignedKey
    ws_key: SignedKey
    ed25519: Ed25519Key | None = None
    v2: V2Key | None = None
    spare: list[SignedKey] = field(default_factory=list)


async def create_fixture(settings: Settings) -> Fixture:
    """Through the service layer, as an operator would: a user with read-only keys (no IP rule), one in
    the ``compatible`` replay mode, the others created without a mode (the default), and an admin."""
    kg = Keygate(settings)
    try:
        await kg.start(bootstrap_admin=False)
        name = f"bench{secrets.token_hex(4)}"
        user = await kg.users.create(OPERATOR, name, secrets.token_urlsafe(16), "bench@example.com")
        admin_name, admin_pw = f"benchadmin{secrets.token_hex(3)}", secrets.token_urlsafe(16)
        await kg.users.create(OPERATOR, admin_name, admin_pw, "", is_admin=True)

        async def key(compatible: bool) -> SignedKey:
            options: dict[str, Any] = {}
            if compatible and "replay_mode" in inspect.signature(kg.keys.create).parameters:
                from keygate.domain.replay import ReplayMode

                options["replay_mode"] = ReplayMode.COMPATIBLE
            created = await kg.keys.create(OPERATOR, user.user_id, frozenset(), IpAllowlist(), "bench", **options)
            return SignedKey(created.key.api_key, user.user_id, created.secret)

        fx = Fixture(user.user_id, name, admin_name, admin_pw, await key(True), await key(False), await key(False), await key(False))
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        from keygate.domain.key_material import KeyType

        private = Ed25519PrivateKey.generate()
        public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        made = await kg.keys.create(OPERATOR, user.user_id, frozenset(), IpAllowlist(), "bench ed25519",
                                    key_type=KeyType.ED25519, public_key=public)
        fx.ed25519 = Ed25519Key(made.key.api_key, user.user_id, private)
        v2 = await key(False)
        fx.v2 = V2Key(v2.api_key, v2.secret, "/AP/GetUserInfo")
        await kg.flush()
        return fx
    finally:
        await kg.close()


def fill_store(settings: Settings, users: int, keys: int, sessions: int, prefix: str) -> dict[str, Any]:
    """Bulk rows through bench/scale_fill.py (the ``views`` helper's fast fill), else bench's own plain
    batch insert (bench/fallback_fill.py), timed. ``prefix`` keeps two fills' usernames apart."""
    if keys <= 0 and sessions <= 0:
        return {"users": 0, "keys": 0, "sessions": 0, "seconds": 0.0, "source": "nothing to fill"}
    users = max(users, 1, -(-keys // 50))
    source = "bench/scale_fill.py"
    try:
        from scale_fill import fill  # type: ignore[import-not-found]
    except ImportError:
        from fallback_fill import fill  # a plain batch insert of bench's own, until scale_fill.py lands

        source = "bench/fallback_fill.py"
    started = time.monotonic()
    options = {"prefix": prefix} if "prefix" in inspect.signature(fill).parameters else {}
    result = fill(settings, users, keys, sessions, **options)
    if inspect.isawaitable(result):
        result = asyncio.run(result)
    return {"users": users, "keys": keys, "sessions": sessions, "seconds": round(time.monotonic() - started, 1),
            "source": source}


# ----- processes --------------------------------------------------------------------------------

def wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path, what: str, timeout: float = 120) -> float:
    started = time.monotonic()
    deadline = started + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited early:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.02)
    proc.kill()
    raise SystemExit(f"{what} did not start:\n{log.read_text()[-4000:]}")


def start_keygate(dep: Deployment, port: int, cpu: int | None, log: Path) -> tuple[subprocess.Popen[bytes], float]:
    """Start ``python -m keygate serve``; return it and its start-up time (process start to /readyz 200)."""
    started = time.monotonic()
    proc = subprocess.Popen(pinned(cpu, [sys.executable, "-m", "keygate", "serve"]), env=server_env(dep, port),
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)
    wait_ready(proc, f"http://127.0.0.1:{port}/readyz", log, "keygate server")
    return proc, time.monotonic() - started


def start_hello(port: int, cpu: int | None, log: Path, wait: bool = True) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(pinned(cpu, [sys.executable, str(BENCH / "hello_app.py"), str(port)]),
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)
    if wait:
        wait_ready(proc, f"http://127.0.0.1:{port}/readyz", log, "bare Starlette hello")
    return proc


def log_tail(log: Path, lines: int = 15) -> list[str]:
    """The server's last warnings and errors (it logs at warning level): what answered non-2xx, if it says."""
    try:
        text = log.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [ln[:300] for ln in text if "WARNING" in ln or "ERROR" in ln or "Traceback" in ln][-lines:]


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def signed_headers(key: SignedKey, nonce: str) -> dict[str, str]:
    return {"APIKey": key.api_key, "Signature": compute_signature(key.secret, nonce, key.user_id, key.api_key),
            "UserId": str(key.user_id), "Nonce": nonce}


def sign_in(base_url: str, key: SignedKey) -> str:
    reply = httpx.get(f"{base_url}/AP/AuthenticateUser", headers=dict(zip(("APIKey", "UserId", "Nonce", "Signature"), key.take())), timeout=10)
    body = reply.json()
    if reply.status_code != 200 or not body.get("Authenticated"):
        raise SystemExit(f"AuthenticateUser failed during setup: {reply.status_code} {body}")
    return str(body["SessionToken"])


def build_scenarios(fx: Fixture, token: str) -> list[Scenario]:
    assert fx.ed25519 is not None and fx.v2 is not None
    fixed = signed_headers(fx.compatible, FIXED_NONCE)
    return [
        Scenario(PING, "/AP/Ping", {}),
        Scenario(HELLO, "/AP/Ping", {}, target="starlette"),
        Scenario(APTOKEN, "/AP/GetUserInfo", {"aptoken": token}),
        Scenario(FORWARD, "/keygate/authorize", {"aptoken": token}),
        Scenario(SIGNED_COMPAT, "/AP/GetUserInfo", fixed),
        Scenario(SIGNED_DEFAULT, "/AP/GetUserInfo", {}, Feed.signed([fx.signed_default])),
        Scenario(AUTH_DEFAULT, "/AP/AuthenticateUser", {}, Feed.signed([fx.auth_default])),
        Scenario(AUTH_COMPAT, "/AP/AuthenticateUser", fixed),
        Scenario(ED25519_AUTH, "/AP/AuthenticateUser", {}, Feed.rows_of(SIGNED_COLUMNS, fx.ed25519, max_rows=ED25519_MAX_ROWS)),
        Scenario(V2_SIGNED, "/AP/GetUserInfo", {}, Feed.rows_of(V2_COLUMNS, fx.v2, max_rows=V2_MAX_ROWS)),
    ]


def check_scenarios(urls: dict[str, str], plan: list[Scenario]) -> None:
    """Every scenario must answer 200 before it is worth measuring (a fed one: with its next row)."""
    for sc in plan:
        headers = dict(sc.headers)
        if sc.feed is not None:
            headers.update(zip(sc.feed.columns, sc.feed.make_rows(1)[0]))
        r = httpx.get(urls[sc.target] + sc.path, headers=headers, timeout=10)
        if r.status_code != 200:
            raise SystemExit(f"{sc.name} answered {r.status_code} during setup: {r.text[:500]}")


# ----- measuring --------------------------------------------------------------------------------

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
    feed_wrapped: int
    server_cpu_percent: float
    server_cpu_us_per_request: float
    wrk_cpu_percent: float
    ratio_to_ping: float
    ratios_to_ping_per_round: list[float]
    ratio_to_hello: float
    cpu_ratio_to_ping: float | None = None  # Ping's server CPU per request / this one's: the ratio on an idle machine


def measure(urls: dict[str, str], pids: dict[str, int], plan: list[Scenario], args: argparse.Namespace, work: Path,
            label: str) -> list[Result]:
    """Warm every scenario up, then run them in turn, round after round (Ping first in each round).

    Interleaving spreads any disturbance of the machine over every scenario, and each round's ratios
    are taken against that same round's Ping (and bare Starlette); the median round is reported.
    """
    def one(sc: Scenario, seconds: float, ping_rate: float) -> Run:
        return run_wrk(urls[sc.target], sc, seconds, args.connections, args.wrk_cpu, pids[sc.target], work, ping_rate)

    if args.warmup > 0:
        for sc in plan:
            one(sc, args.warmup, max(plan[0].rates, default=0.0))
    rounds: list[list[Run]] = []
    for number in range(1, args.rounds + 1):
        runs: list[Run] = []
        for sc in plan:
            runs.append(one(sc, args.duration, runs[0].rate if runs else 0.0))
        rounds.append(runs)
        print(f"  [{label}] round {number}: " + ", ".join(f"{sc.name.split(' (')[0][:22]} {run.rate:.0f}" for sc, run in zip(plan, runs))
              + " req/s", flush=True)
    names = [sc.name for sc in plan]
    results = []
    for i, sc in enumerate(plan):
        runs = [r[i] for r in rounds]
        median_run = sorted(runs, key=lambda r: r.rate)[len(runs) // 2]
        s = median_run.summary
        to_ping = sorted(r[i].rate / r[names.index(PING)].rate for r in rounds)
        to_hello = sorted(r[i].rate / r[names.index(HELLO)].rate for r in rounds) if HELLO in names else [0.0]
        results.append(Result(
            name=sc.name, requests_per_second=round(median_run.rate, 1),
            p50_ms=s["p50_us"] / 1000, p90_ms=s["p90_us"] / 1000,
            p99_ms=statistics.median(r.summary["p99_us"] for r in runs) / 1000,
            mean_ms=round(s["mean_us"] / 1000, 3), max_ms=s["max_us"] / 1000, requests=sum(r.summary["requests"] for r in runs),
            status_errors=sum(r.summary["status_errors"] for r in runs), socket_errors=sum(r.summary["socket_errors"] for r in runs),
            feed_wrapped=sum(r.summary.get("wrapped", 0) for r in runs),
            server_cpu_percent=round(median_run.server_cpu_percent, 1),
            server_cpu_us_per_request=round(median_run.server_cpu_us_per_request, 1),
            wrk_cpu_percent=round(median_run.wrk_cpu_percent, 1),
            ratio_to_ping=round(to_ping[len(to_ping) // 2], 3), ratios_to_ping_per_round=[round(x, 3) for x in to_ping],
            ratio_to_hello=round(to_hello[len(to_hello) // 2], 3),
        ))
    ping = next((r for r in results if r.name == PING), None)
    for r in results:
        if ping is not None and r.server_cpu_us_per_request:
            r.cpu_ratio_to_ping = round(ping.server_cpu_us_per_request / r.server_cpu_us_per_request, 3)
    return results


def measure_websocket(base_url: str, key: SignedKey, args: argparse.Namespace) -> list[dict[str, Any]]:
    """AuthenticateUser and GetUserInfo frames per second, on 1 and on ``--connections`` connections."""
    url = base_url.replace("http://", "ws://") + "/WSGateway"
    runs = [{"endpoint": endpoint, "connections": conns,
             "prepared": int(args.ws_duration * 20000) if endpoint == "AuthenticateUser" else 0}
            for endpoint in ("AuthenticateUser", "GetUserInfo") for conns in (1, args.connections)]
    spec = {"url": url, "seconds": args.ws_duration, "runs": runs,
            "key": {"api_key": key.api_key, "user_id": key.user_id, "secret": key.secret, "next_nonce": key.next_nonce}}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run(pinned(args.wrk_cpu, [sys.executable, str(BENCH / "wsload.py"), json.dumps(spec)]),
                          capture_output=True, text=True, env=env, timeout=args.ws_duration * 40 + 120)
    lines = [json.loads(ln.split(" ", 1)[1]) for ln in proc.stdout.splitlines() if ln.startswith("WS_JSON ")]
    if proc.returncode != 0 or len(lines) != len(runs):
        return [{**run, "error": (proc.stderr or proc.stdout)[-800:]} for run in runs]
    out = []
    for run, result in zip(runs, lines):
        key.next_nonce = max(key.next_nonce, int(result.pop("next_nonce")))
        result.update(endpoint=run["endpoint"], connections=run["connections"], client_bound=result["client_cpu_percent"] >= 90)
        out.append(result)
    return out


def measure_cli_wall(dep: Deployment, username: str, runs: int) -> dict[str, Any]:
    """Median wall time of ``keygate key list --user U``: bench/cli_timing.py (the ``cli`` helper's) if
    present, else timed here with subprocess."""
    env = server_env(dep, 0)
    env.pop("KEYGATE_PORT", None)
    fallback_note = ""
    try:
        from cli_timing import measure_cli  # type: ignore[import-not-found]
    except ImportError:
        pass
    else:
        try:
            params = inspect.signature(measure_cli).parameters
            options: dict[str, Any] = {"user": username} if "user" in params else {}
            if "runs" in params:
                options["runs"] = runs
            found = dict(measure_cli(env, **options))
            found.setdefault("source", "bench/cli_timing.py")
            key_list = found.get("key list")  # its figures per command: median_s, min_s, max_s, cpu_median_s
            if isinstance(key_list, dict) and "median_s" in key_list:
                found["median_seconds"] = float(key_list["median_s"])
            if isinstance(found.get("user list"), dict) and "median_s" in found["user list"]:
                found["user_list_median_seconds"] = float(found["user list"]["median_s"])
            if "median_seconds" in found:
                return found
            fallback_note = f"bench/cli_timing.py returned no median for key list: {found}"
        except Exception as exc:  # its failure is reported; the fallback still measures
            fallback_note = f"bench/cli_timing.py failed: {type(exc).__name__}: {exc}"
    argv = [sys.executable, "-m", "keygate", "key", "list", "--user", username]
    times = []
    for _ in range(runs):
        started = time.monotonic()
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        times.append(time.monotonic() - started)
        if proc.returncode != 0:
            return {"error": f"keygate key list exited {proc.returncode}: {proc.stderr[-500:]}", "source": "bench/run.py"}
    result: dict[str, Any] = {"command": "keygate key list --user U", "runs": runs, "median_seconds": round(statistics.median(times), 3),
                              "min_seconds": round(min(times), 3), "max_seconds": round(max(times), 3), "source": "bench/run.py"}
    if fallback_note:
        result["note"] = fallback_note
    return result


def measure_operator_views(base_url: str, fx: Fixture) -> dict[str, Any]:
    try:
        from operator_views import measure_views  # type: ignore[import-not-found]
    except ImportError as exc:
        return {"error": f"bench/operator_views.py not available ({exc})"}
    try:
        return {"seconds": {str(k): float(v) for k, v in measure_views(base_url, fx.admin_username, fx.admin_password).items()}}
    except Exception as exc:
        return {"error": f"bench/operator_views.py failed: {type(exc).__name__}: {exc}"}


# ----- scale ------------------------------------------------------------------------------------

async def make_sample(settings: Settings, count: int, base_url_unused: str = "") -> tuple[list[SignedKey], list[str]]:
    """``count`` keys and ``count`` key sessions the server has not seen yet (it is restarted after),
    made through the service layer: touched afterwards, they measure memory per cached entry."""
    from keygate.service.auth import KeyCredentials
    from keygate.service.keys import MAX_KEYS_PER_USER

    kg = Keygate(settings)
    keys: list[SignedKey] = []
    tokens: list[str] = []
    try:
        await kg.start(bootstrap_admin=False)
        user_id = 0
        for i in range(count):
            if i % MAX_KEYS_PER_USER == 0:
                user_id = (await kg.users.create(OPERATOR, f"sample{secrets.token_hex(5)}", secrets.token_urlsafe(16), "")).user_id
            created = await kg.keys.create(OPERATOR, user_id, frozenset(), IpAllowlist(), "sample")
            keys.append(SignedKey(created.key.api_key, user_id, created.secret))
        for k in keys:
            api_key, uid, nonce, sig = k.take()
            grant = await kg.auth.authenticate_key(KeyCredentials(api_key, sig, int(uid), nonce), "127.0.0.1")
            tokens.append(grant.token)
        await kg.flush()
    finally:
        await kg.close()
    return keys, tokens


def touch_all(base_url: str, requests: list[dict[str, str]], path: str) -> int:
    """Send each header set once (16 at a time); return how many did not answer 200."""
    async def go() -> int:
        bad = 0
        sem = asyncio.Semaphore(16)
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            async def one(h: dict[str, str]) -> None:
                nonlocal bad
                async with sem:
                    if (await client.get(path, headers=h)).status_code != 200:
                        bad += 1
            await asyncio.gather(*(one(h) for h in requests))
        return bad

    return asyncio.run(go())


def cached_entry_memory(base_url: str, pid: int, keys: list[SignedKey], tokens: list[str]) -> dict[str, Any]:
    """RSS growth per entry: one signed call on each distinct key (caches the key, its opened secret and
    prepared HMAC, and its user: one per 50 keys), then one aptoken call on a session of each of those
    keys (caches the session alone, its key and user being cached already)."""
    out: dict[str, Any] = {"sample": len(tokens)}
    before = rss_bytes(pid)
    bad = touch_all(base_url, [dict(zip(("APIKey", "UserId", "Nonce", "Signature"), k.take())) for k in keys], "/AP/GetUserInfo")
    after_keys = rss_bytes(pid)
    bad += touch_all(base_url, [{"aptoken": t} for t in tokens], "/AP/GetUserInfo")
    after_sessions = rss_bytes(pid)
    out.update(bytes_per_cached_key=round((after_keys - before) / max(len(keys), 1)),
               bytes_per_cached_session=round((after_sessions - after_keys) / max(len(tokens), 1)), touch_errors=bad,
               method="VmRSS growth / distinct entries touched: keys first (key, opened secret, user per 50 keys), "
                      "then one session of each key (the session entry alone)")
    return out


# ----- verdicts and output ----------------------------------------------------------------------

@dataclass
class Check:
    configuration: str
    what: str
    figure: float | None
    target: str
    verdict: str  # PASS, FAIL, ERRORS, or "n/a" (not measured)


def judge(config: str, results: list[Result], extra: dict[str, Any]) -> list[Check]:
    by = {r.name: r for r in results}
    checks: list[Check] = []
    for name, ref, minimum in RATIO_TARGETS:
        r = by.get(name)
        if r is None:
            continue
        ratio = r.ratio_to_hello if ref == HELLO else r.ratio_to_ping
        errors = r.status_errors or r.socket_errors or by[ref].status_errors or by[ref].socket_errors
        checks.append(Check(config, f"{name} / {ref}", ratio, f">= {minimum:.2f}",
                            "ERRORS" if errors else ("PASS" if ratio >= minimum else "FAIL")))
    for r in results:  # a scenario with errors fails the run even without a target of its own
        if (r.status_errors or r.socket_errors) and not any(c.what.startswith(r.name + " /") for c in checks):
            checks.append(Check(config, f"{r.name}: no errors", r.status_errors + r.socket_errors, "0 errors", "ERRORS"))
    for ws in extra.get("websocket", []):  # no target, but an error answered is an error
        if ws.get("error") or ws.get("errors"):
            checks.append(Check(config, f"WebSocket {ws['endpoint']} frames on {ws['connections']} connection(s): no errors",
                                ws.get("errors"), "0 errors", "ERRORS"))
    scale = extra.get("scale")
    if scale and "p99_ms" in scale:
        for name, (base, big) in scale["p99_ms"].items():
            rel = big / base if base else None
            checks.append(Check(config, f"p99 of {name} at {scale['keys']:,} keys / at {BASE_KEYS:,}", round(rel, 3) if rel else None,
                                f"<= {1 + SCALE_P99_TOLERANCE:.2f}", "PASS" if rel is not None and rel <= 1 + SCALE_P99_TOLERANCE else "FAIL"))
    views = (scale or {}).get("operator_views") or extra.get("operator_views") or {}
    for page, seconds in (views.get("seconds") or {}).items():
        checks.append(Check(config, f"operator view: {page} (s)", round(seconds, 3), f"<= {VIEW_SECONDS}",
                            "PASS" if seconds <= VIEW_SECONDS else "FAIL"))
    if views.get("error"):
        checks.append(Check(config, "operator views", None, f"<= {VIEW_SECONDS} s each", "n/a"))
    cli = extra.get("cli") or {}
    if "median_seconds" in cli:
        checks.append(Check(config, "keygate key list --user U, wall (s)", cli["median_seconds"], f"<= {CLI_SECONDS}",
                            "PASS" if cli["median_seconds"] <= CLI_SECONDS else "FAIL"))
    else:
        checks.append(Check(config, "keygate key list --user U, wall (s)", None, f"<= {CLI_SECONDS}", "ERRORS"))
    return checks


def wrk_table(results: list[Result], checks: list[Check]) -> str:
    verdicts = {c.what.split(" / ")[0]: (c.target, c.verdict) for c in checks if " / " in c.what and not c.what.startswith("p99")}
    head = (f"{'scenario':<50} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'vs Ping':>7} {'vs hello':>8} {'target':>14} {'':<6} "
            f"{'srv cpu':>7} {'us/req':>6} {'wrk cpu':>7} {'errors':>6}")
    lines = [head, "-" * len(head)]
    for r in results:
        target, verdict = verdicts.get(r.name, ("", ""))
        if target:
            target = ("hello " if r.name == APTOKEN else "Ping ") + target
        errors = r.status_errors + r.socket_errors
        if r.feed_wrapped:
            verdict = "ERRORS"
        lines.append(f"{r.name:<50} {r.requests_per_second:>8.0f} {r.p50_ms:>7.2f} {r.p99_ms:>7.2f} {r.ratio_to_ping:>7.2f} "
                     f"{r.ratio_to_hello:>8.2f} {target:>14} {verdict or ('ERRORS' if errors else ''):<6} {r.server_cpu_percent:>6.0f}% "
                     f"{r.server_cpu_us_per_request:>6.0f} {r.wrk_cpu_percent:>6.0f}% {errors:>6}"
                     + (f"  (feed ran out {r.feed_wrapped}x)" if r.feed_wrapped else ""))
    return "\n".join(lines)


def extra_lines(extra: dict[str, Any]) -> list[str]:
    lines = []
    for ws in extra.get("websocket", []):
        if "error" in ws:
            lines.append(f"WebSocket {ws['endpoint']} frames, {ws['connections']} conn: ERROR {ws['error'][-200:]}")
            continue
        bound = "  (client saturated its core: a lower bound)" if ws["client_bound"] else ""
        lines.append(f"WebSocket {ws['endpoint']:<16} frames/s on {ws['connections']:>2} connection(s): {ws['frames_per_second']:>8.0f}"
                     f"  errors {ws['errors']}  client cpu {ws['client_cpu_percent']:.0f}%{bound}"
                     + (f"  first error: {ws['first_error'][:160]}" if ws.get("first_error") else ""))
    if extra.get("server_log_tail") and extra.get("_errors"):
        lines.append("server log (warnings and errors, last lines):")
        lines += [f"  {ln}" for ln in extra["server_log_tail"]]
    cli = extra.get("cli") or {}
    if "median_seconds" in cli:
        lines.append(f"CLI `keygate key list --user U`: median {cli['median_seconds']:.3f} s wall ({cli.get('source')})"
                     + (f"; `keygate user list` {cli['user_list_median_seconds']:.3f} s" if "user_list_median_seconds" in cli else ""))
    elif cli:
        lines.append(f"CLI: {cli.get('error')}")
    views = extra.get("operator_views") or {}
    if views.get("error"):
        lines.append(f"operator views: {views['error']}")
    scale = extra.get("scale")
    if scale:
        if scale.get("error"):
            lines.append(f"scale: {scale['error']}")
        else:
            lines.append(f"scale: {scale['keys']:,} keys, {scale['sessions']:,} sessions (filled in {scale['fill'].get('seconds')} s): "
                         f"start-up to /readyz {scale['startup_seconds']:.2f} s (with {BASE_KEYS:,} keys: {extra.get('startup_seconds', 0):.2f} s), "
                         f"server RSS after load {scale['rss_after_load_mb']:.0f} MB (with {BASE_KEYS:,} keys: {extra.get('rss_after_load_mb', 0):.0f} MB)")
            for name, (base, big) in scale["p99_ms"].items():
                lines.append(f"  p99 {name}: {base:.2f} ms with {BASE_KEYS:,} keys, {big:.2f} ms at scale")
            mem = scale.get("memory") or {}
            if mem:
                lines.append(f"  memory per cached session {mem['bytes_per_cached_session']} B, per cached key {mem['bytes_per_cached_key']} B "
                             f"(RSS delta over {mem['sample']} distinct entries; {mem['touch_errors']} touch errors)")
    elif "startup_seconds" in extra:
        lines.append(f"server start-up to /readyz {extra['startup_seconds']:.2f} s; RSS after load {extra.get('rss_after_load_mb', 0):.0f} MB")
    return lines


def summary_table(checks: list[Check]) -> str:
    head = f"{'configuration':<17} {'target':<82} {'figure':>8} {'wanted':>8}  verdict"
    lines = [head, "-" * len(head)]
    for c in checks:
        fig = "-" if c.figure is None else f"{c.figure:.3f}"
        lines.append(f"{c.configuration:<17} {c.what:<82} {fig:>8} {c.target:>8}  {c.verdict}")
    return "\n".join(lines)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# ----- one configuration ------------------------------------------------------------------------

def bench_configuration(dep: Deployment, args: argparse.Namespace, work: Path) -> tuple[list[Result], dict[str, Any], list[Check]]:
    print(f"\n== {dep.name}: {dep.describe}", flush=True)
    extra: dict[str, Any] = {}
    logs = work / f"{dep.name.replace('+', '-')}-server.log"
    kport, hport = free_port(), free_port()
    urls = {"keygate": f"http://127.0.0.1:{kport}", "starlette": f"http://127.0.0.1:{hport}"}
    server = None
    hello = start_hello(hport, args.server_cpu, work / "hello.log", wait=False)  # starts while the fixture is made
    try:
        fx = asyncio.run(create_fixture(dep.settings))  # migrates the fresh store
        if args.scale:  # the figures the scale run is compared with: 1,000 keys and sessions in the store
            extra["base_fill"] = fill_store(dep.settings, BASE_KEYS // 10, BASE_KEYS, BASE_KEYS, "base")
        wait_ready(hello, f"{urls['starlette']}/readyz", work / "hello.log", "bare Starlette hello")
        server, extra["startup_seconds"] = start_keygate(dep, kport, args.server_cpu, logs)
        extra["readyz"] = httpx.get(f"{urls['keygate']}/readyz", timeout=10).json().get("checks")
        print(f"  keygate ready in {extra['startup_seconds']:.2f} s, /readyz checks: {extra['readyz']}", flush=True)
        token = sign_in(urls["keygate"], fx.compatible)
        plan = [sc for sc in build_scenarios(fx, token)
                if not args.scenario or sc.name in (PING, HELLO) or any(w.lower() in sc.name.lower() for w in args.scenario)]
        check_scenarios(urls, plan)
        results = measure(urls, {"keygate": server.pid, "starlette": hello.pid}, plan, args, work, dep.name)
        extra["rss_after_load_mb"] = round(rss_bytes(server.pid) / 2**20, 1)
        extra["server_log_tail"] = log_tail(logs)
        if args.ws_duration > 0:
            extra["websocket"] = measure_websocket(urls["keygate"], fx.ws_key, args)
        if not args.scale:
            extra["operator_views"] = measure_operator_views(urls["keygate"], fx)
        stop(server)
        server = None
        extra["cli"] = measure_cli_wall(dep, fx.username, args.cli_runs)
        if args.scale:
            extra["scale"] = bench_scale(dep, args, work, fx, results, urls, hello)
    finally:
        stop(server)
        stop(hello)
    return results, extra, judge(dep.name, results, extra)


def bench_scale(dep: Deployment, args: argparse.Namespace, work: Path, fx: Fixture, base: list[Result],
                urls: dict[str, str], hello: subprocess.Popen[bytes]) -> dict[str, Any]:
    n = args.scale
    out: dict[str, Any] = {"keys": n, "sessions": n}
    out["fill"] = fill_store(dep.settings, max(n - BASE_KEYS, 0) // 10, max(n - BASE_KEYS, 0), max(n - BASE_KEYS, 0), "scale")
    if "error" in out["fill"]:
        out["error"] = out["fill"]["error"]
        return out
    sample_keys, sample_tokens = asyncio.run(make_sample(dep.settings, args.scale_sample))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server, out["startup_seconds"] = start_keygate(dep, port, args.server_cpu, work / "scale-server.log")
    try:
        token = sign_in(url, fx.compatible)
        plan = [sc for sc in build_scenarios(fx, token) if sc.name in (PING, APTOKEN, SIGNED_DEFAULT)]
        check_scenarios({"keygate": url}, plan)
        results = measure({"keygate": url}, {"keygate": server.pid}, plan, args, work, f"{dep.name} at {n:,}")
        out["results"] = [asdict(r) for r in results]
        out["rss_after_load_mb"] = round(rss_bytes(server.pid) / 2**20, 1)
        by_base, by_big = {r.name: r for r in base}, {r.name: r for r in results}
        out["p99_ms"] = {name: (by_base[name].p99_ms, by_big[name].p99_ms) for name in (APTOKEN, SIGNED_DEFAULT)}
        out["memory"] = cached_entry_memory(url, server.pid, sample_keys, sample_tokens)
        out["rss_after_touch_mb"] = round(rss_bytes(server.pid) / 2**20, 1)
        out["operator_views"] = measure_operator_views(url, fx)
    finally:
        stop(server)
    return out


# ----- main -------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--only", choices=[SQLITE, PGREDIS], help="measure one configuration only (default: both)")
    p.add_argument("--database-url", default=DEFAULT_PG, help=f"PostgreSQL server for the postgresql+redis configuration; a fresh "
                   f"database is created on it and dropped afterwards (default {DEFAULT_PG})")
    p.add_argument("--redis-url", default=DEFAULT_REDIS, help=f"Redis for postgresql+redis; a fresh random namespace is used "
                   f"and its keys deleted afterwards (default {DEFAULT_REDIS})")
    p.add_argument("--duration", type=float, default=3, help="seconds measured per scenario and round (default 3)")
    p.add_argument("--warmup", type=float, default=1, help="seconds of unmeasured load per scenario before the rounds (default 1)")
    p.add_argument("--scenario", action="append", metavar="TEXT",
                   help="measure only the scenarios whose name contains TEXT (repeatable; Ping and the hello always run)")
    p.add_argument("--rounds", type=int, default=5, help="measured rounds of every scenario (default 5); medians are reported")
    p.add_argument("--connections", type=int, default=16, help="concurrent connections (default 16)")
    p.add_argument("--ws-duration", type=float, default=2, help="seconds per WebSocket measurement, 0 to skip (default 2)")
    p.add_argument("--cli-runs", type=int, default=5, help="runs of `keygate key list` timed (default 5)")
    p.add_argument("--scale", type=int, default=0, help="also measure with N keys and N live sessions in the store (e.g. 1000000)")
    p.add_argument("--scale-sample", type=int, default=2000, help="distinct keys and sessions touched to measure memory per cached entry")
    p.add_argument("--server-cpu", type=int, default=0, help="core the servers are pinned to (default 0)")
    p.add_argument("--wrk-cpu", type=int, default=1, help="core wrk and the WebSocket client are pinned to (default 1)")
    p.add_argument("--output", type=Path, default=RESULTS, help="JSON results file (default bench/results/latest.json)")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.connections < 1:
        p.error("--rounds and --connections must be 1 or more")
    if (os.cpu_count() or 1) < 2:
        args.server_cpu = args.wrk_cpu = None
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    need_tools()
    V2_WINDOW_SECONDS[0] = max(5, int(args.duration + 3))
    configs = [args.only] if args.only else [SQLITE, PGREDIS]
    skipped: dict[str, str] = {}
    if PGREDIS in configs:
        problem = reachable(args.database_url, args.redis_url)
        if problem and args.only == PGREDIS:
            print(f"{problem}: nothing measured", file=sys.stderr)
            return 2
        if problem:
            print(f"{problem}: measuring SQLite only", flush=True)
            skipped[PGREDIS] = problem
            configs = [SQLITE]
    print(f"keygate bench: {', '.join(configs)}; servers on core {args.server_cpu}, load on core {args.wrk_cpu}, "
          f"{args.connections} connections; {args.warmup:g} s warm-up, then {args.rounds} rounds of {args.duration:g} s per scenario"
          + (f"; scale {args.scale:,}" if args.scale else ""), flush=True)
    work = Path(tempfile.mkdtemp(prefix="keygate-bench-"))
    report: dict[str, Any] = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "bench/run.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": {"cpus": os.cpu_count(), "cpu_model": cpu_model(), "python": platform.python_version(), "kernel": platform.release(),
                    "loadavg_at_start": os.getloadavg()},
        "load": {"tool": "wrk", "threads": 1, "connections": args.connections, "duration_seconds": args.duration,
                 "warmup_seconds": args.warmup, "rounds": args.rounds, "server_cpu": args.server_cpu, "wrk_cpu": args.wrk_cpu},
        "targets": {"ratios": [{"scenario": s, "reference": r, "minimum": m} for s, r, m in RATIO_TARGETS],
                    "scale_p99_tolerance": SCALE_P99_TOLERANCE, "operator_view_seconds": VIEW_SECONDS, "cli_seconds": CLI_SECONDS},
        "skipped": skipped,
        "configurations": {},
    }
    all_checks: list[Check] = []
    started = time.monotonic()
    try:
        for name in configs:
            dep = make_deployment(name, args, work)
            try:
                results, extra, checks = bench_configuration(dep, args, work)
            finally:
                for undo in dep.cleanup:
                    try:
                        undo()
                    except Exception as exc:
                        print(f"cleanup of {name} failed: {exc}", file=sys.stderr)
            all_checks += checks
            print(f"\n{name}:")
            print(wrk_table(results, checks))
            extra["_errors"] = any(r.status_errors or r.socket_errors for r in results)
            for line in extra_lines(extra):
                print(line)
            extra.pop("_errors", None)
            report["configurations"][name] = {"describe": dep.describe, "results": [asdict(r) for r in results], **extra,
                                              "checks": [asdict(c) for c in checks]}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ok = all(c.verdict in ("PASS", "n/a") for c in all_checks) and all(
        r["feed_wrapped"] == 0 for c in report["configurations"].values() for r in c["results"])
    print("\nsummary:")
    print(summary_table(all_checks))
    for name, problem in skipped.items():
        print(f"{name}: not measured: {problem}")
    print(f"\n{'all targets met' if ok else 'TARGET MISSED (or errors): see the tables'} ({time.monotonic() - started:.0f} s)")
    report["summary"] = [asdict(c) for c in all_checks]
    report["all_targets_met"] = ok
    report["elapsed_seconds"] = round(time.monotonic() - started, 1)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results written to {args.output}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
