"""Refusal time by reason: does a refused sign-in take the same time whatever was wrong?

For each setup (SQLite with its state in the database; PostgreSQL with Redis) the script makes a fresh
database, two users and their keys through the service layer, starts one real ``python -m keygate
serve`` process, and sends ``--rounds`` rounds (default 300) of interleaved refusals, one of each
reason per round, each round from its own loopback source address (so no address reaches its
throttle). It prints the median and p90 per reason and the spread of the medians (largest over
smallest; the promise in docs/security.md is at most 1.10), and writes ``bench/results/refusal_timing.json``.

    PYTHONPATH=src python bench/refusal_timing.py [--rounds 300] [--only sqlite|postgresql]

Key refusals (unknown key, another user's key, unknown user, wrong signature) answer the same bytes;
password refusals (unknown username, wrong password) too. Exit status 1: a spread above 1.10.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import secrets
import socket
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from keygate.config import Settings  # noqa: E402
from keygate.domain.iprules import IpAllowlist  # noqa: E402
from keygate.domain.signature import compute_signature  # noqa: E402
from keygate.service import Keygate  # noqa: E402
from keygate.service.principal import operator_acting_as  # noqa: E402
from support import REDIS_URL, _port_open, _psql, start_server, stop_server  # noqa: E402

# No refusal here may turn into a 429: per-address counters stay low (a fresh address per round), and
# wrong passwords are spread over a pool of users, each under its lockout (at most 100 failures).
ENV = {"KEYGATE_THROTTLE_IP_FAILURES": "1000", "KEYGATE_THROTTLE_USER_FAILURES": "1000", "KEYGATE_LOCKOUT_FAILURES": "100",
       "KEYGATE_DEFAULT_REPLAY_MODE": "compatible"}
PASSWORD_POOL = 8


def _signed(api_key: str, secret: str, user_id: int) -> dict[str, str]:
    nonce = str(time.time_ns())
    return {"APIKey": api_key, "Signature": compute_signature(secret, nonce, user_id, api_key), "UserId": str(user_id), "Nonce": nonce}


async def _prepare(settings: Settings) -> dict[str, object]:
    kg = Keygate(settings)
    await kg.start(bootstrap_admin=False)
    try:
        made = {}
        for role in ("victim", "other", *(f"pool{i}" for i in range(PASSWORD_POOL))):
            password = secrets.token_urlsafe(16)
            user = await kg.users.create(f"{role}{secrets.token_hex(3)}", password)
            key = None if role.startswith("pool") else await kg.keys.create(operator_acting_as(user), user.user_id, frozenset(), IpAllowlist())
            made[role] = (user, password, key)
        await kg.flush()
        return made
    finally:
        await kg.close()


async def _measure(base_url: str, made: dict[str, tuple], rounds: int, with_passwords: bool) -> dict[str, list[float]]:  # type: ignore[type-arg]
    victim, password, key = made["victim"]
    _, _, other_key = made["other"]
    vid, api_key = victim.user_id, key.key.api_key
    reasons = {
        "key: unknown key": lambda: {"headers": _signed("K" * 32, key.secret, vid)},
        "key: another user's key": lambda: {"headers": _signed(other_key.key.api_key, other_key.secret, vid)},
        "key: unknown user id": lambda: {"headers": _signed(api_key, key.secret, 987_654_321)},
        "key: wrong signature": lambda: {"headers": _signed(api_key, secrets.token_hex(16), vid)},
    }
    if with_passwords:
        reasons["password: unknown username"] = lambda: {"json": {"UserName": f"ghost{secrets.token_hex(4)}", "Password": password}}
        pool = [made[f"pool{i}"][0].username for i in range(PASSWORD_POOL)]
        reasons["password: wrong password"] = lambda: {"json": {"UserName": secrets.choice(pool), "Password": "not-" + password}}
    times: dict[str, list[float]] = {r: [] for r in reasons}
    for rnd in range(rounds):
        address = f"127.{200 + rnd // 62500 % 50}.{rnd // 250 % 250}.{rnd % 250 + 1}"
        async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(local_address=address), base_url=base_url, timeout=30) as c:
            order = list(reasons.items())
            if rnd % 2:
                order.reverse()  # interleaved, and neither reason always first
            for reason, make in order:
                started = time.perf_counter()
                r = await c.post("/AP/AuthenticateUser", **make())
                times[reason].append(time.perf_counter() - started)
                if r.status_code != 401:
                    raise SystemExit(f"{reason}: expected 401, got {r.status_code} {r.text}")
    return times


def _summary(times: dict[str, list[float]]) -> dict[str, object]:
    rows = {}
    for reason, samples in times.items():
        ordered = sorted(samples)
        rows[reason] = {"n": len(samples), "median_ms": round(statistics.median(samples) * 1000, 2),
                        "p90_ms": round(ordered[int(len(ordered) * 0.9)] * 1000, 2)}
    spreads = {}
    for group in ("key", "password"):
        medians = [v["median_ms"] for k, v in rows.items() if k.startswith(group)]
        if medians:
            spreads[group] = round(max(medians) / min(medians), 3)
    return {"reasons": rows, "spread": spreads}


def _run_setup(name: str, rounds: int, with_passwords: bool) -> dict[str, object]:
    tmp = Path(tempfile.mkdtemp(prefix=f"kg-timing-{name}-"))
    db_name = None
    redis = None
    if name == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp / 'keygate.db'}"
    else:
        if not _port_open("127.0.0.1", 5432) or not _port_open("127.0.0.1", 6379):
            return {"skipped": "PostgreSQL at 127.0.0.1:5432 and Redis at 127.0.0.1:6379 are needed"}
        db_name = f"keygate_timing_{uuid.uuid4().hex[:10]}"
        _psql(f'CREATE DATABASE "{db_name}"')
        url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{db_name}"
        redis = REDIS_URL
    settings = Settings(data_dir=tmp, database_url=url, master_key=base64.b64encode(secrets.token_bytes(32)).decode(),
                        redis_url=redis, redis_namespace=f"kgtiming{secrets.token_hex(3)}", default_replay_mode="compatible")
    try:
        made = asyncio.run(_prepare(settings))
        server = start_server(settings, ENV)
        try:
            times = asyncio.run(_measure(server.base_url, made, rounds, with_passwords))
        finally:
            stop_server(server)
        return _summary(times)
    finally:
        if db_name:
            _psql(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--only", choices=["sqlite", "postgresql"])
    parser.add_argument("--no-passwords", action="store_true", help="skip the (slow, Argon2) password refusals")
    args = parser.parse_args()
    socket.setdefaulttimeout(30)
    results = {}
    for name in ("sqlite", "postgresql"):
        if args.only and args.only != name:
            continue
        label = "SQLite" if name == "sqlite" else "PostgreSQL + Redis"
        print(f"== {label}: {args.rounds} interleaved rounds")
        result = results[name] = _run_setup(name, args.rounds, not args.no_passwords)
        if "skipped" in result:
            print(f"   skipped: {result['skipped']}")
            continue
        for reason, row in result["reasons"].items():  # type: ignore[union-attr]
            print(f"   {reason:28s} median {row['median_ms']:8.2f} ms   p90 {row['p90_ms']:8.2f} ms   n={row['n']}")
        print(f"   spread of medians (largest / smallest): {result['spread']}")
    out = ROOT / "bench" / "results" / "refusal_timing.json"
    out.write_text(json.dumps({"rounds": args.rounds, "results": results, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=2) + "\n")
    bad = [n for n, r in results.items() if any(v > 1.10 for v in r.get("spread", {}).values())]  # type: ignore[union-attr]
    if bad:
        print(f"spread above 1.10 on: {', '.join(bad)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
