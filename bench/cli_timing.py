"""Wall time of everyday CLI commands: ``keygate key list --user U`` and ``keygate user list``.

The target (issue 12) is an answer within 0.5 s of wall time. ``measure_cli(env)`` runs each command
``runs`` times as a real ``python -m keygate`` process against the database ``env`` names (which must
be set up, e.g. by ``keygate init``) and returns the median, minimum and maximum wall time, and the
median CPU time (user + system) of each; ``bench/run.py`` calls it. Run alone, this script sets up a
fresh SQLite data folder (or a fresh database on the PostgreSQL server given by ``--database-url``)
with ``keygate init``, makes one user with one key, and prints the figures:

    PYTHONPATH=src python bench/cli_timing.py [--runs 10] [--database-url postgresql://postgres@127.0.0.1:5432/test]

Python's compiled bytecode: an installed keygate has it (pip writes it), but where
``PYTHONDONTWRITEBYTECODE`` is set, as on some CI machines, every run would compile keygate's own
modules from source again, which is not what an operator's command costs. So by default the commands
run with a private bytecode cache (``PYTHONPYCACHEPREFIX``, a temporary folder), filled by one
warm-up run of each command that is not counted; ``bytecode_cache=False`` runs them as the
environment says.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TARGET_SECONDS = 0.5


def _run_counted(args: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Run ``python -m keygate ARGS``: (wall seconds, CPU seconds of the process, its output)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "keygate", *args], env=env, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=120)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise RuntimeError(f"keygate {' '.join(args)} exited {result.returncode}: {(result.stdout + result.stderr).strip()[:500]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, result.stdout


def _first_user(env: dict[str, str]) -> str:
    _, _, listing = _run_counted(["user", "list"], env)
    for line in listing.splitlines():
        fields = line.split("\t")
        if fields and fields[0].isdigit():
            return fields[0]
    raise RuntimeError("keygate user list printed no user: set the database up first (keygate init)")


def measure_cli(env: dict[str, str], user: str | None = None, runs: int = 10, bytecode_cache: bool = True) -> dict[str, Any]:
    """Median wall time of ``runs`` runs of ``keygate key list --user U`` and of ``keygate user list``.

    ``env``: the environment of the commands (``KEYGATE_DATA_DIR``, ``KEYGATE_DATABASE_URL``,
    ``KEYGATE_MASTER_KEY``, ...), naming a database that is set up. ``user``: a username or UserId
    (default: the first one ``keygate user list`` prints). Returns, per command, ``median_s``,
    ``min_s``, ``max_s`` (wall) and ``cpu_median_s``, with ``runs``, ``target_s`` and ``met`` (both
    medians within the target).
    """
    env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH", "")]))}
    with tempfile.TemporaryDirectory(prefix="keygate-pycache-") as cache:
        if bytecode_cache:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = cache
        who = user or _first_user(env)
        commands = {"key list": ["key", "list", "--user", who], "user list": ["user", "list"]}
        results: dict[str, Any] = {}
        for name, args in commands.items():
            _run_counted(args, env)  # warm-up: fills the bytecode cache and the OS's file cache
            walls, cpus = [], []
            for _ in range(runs):
                wall, cpu, _ = _run_counted(args, env)
                walls.append(wall)
                cpus.append(cpu)
            results[name] = {
                "command": "keygate " + " ".join(args),
                "median_s": round(statistics.median(walls), 4),
                "min_s": round(min(walls), 4),
                "max_s": round(max(walls), 4),
                "cpu_median_s": round(statistics.median(cpus), 4),
            }
    results["runs"] = runs
    results["bytecode_cache"] = bytecode_cache
    results["target_s"] = TARGET_SECONDS
    results["met"] = all(results[name]["median_s"] <= TARGET_SECONDS for name in commands)
    return results


# ----- run alone: set a database up, then measure ---------------------------------------------------
def _set_up(folder: Path, database_url: str | None) -> tuple[dict[str, str], str | None]:
    """A data folder with ``keygate init`` run, one more user and a key: (environment, PostgreSQL db to drop)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYGATE_")}
    env.update(KEYGATE_DATA_DIR=str(folder), KEYGATE_MASTER_KEY=base64.b64encode(secrets.token_bytes(32)).decode(),
               PYTHONPATH=str(ROOT / "src"))
    dropped = None
    if database_url:
        dropped = f"keygate_cli_bench_{uuid.uuid4().hex[:8]}"
        _psql(database_url, f'CREATE DATABASE "{dropped}"')
        env["KEYGATE_DATABASE_URL"] = database_url.rsplit("/", 1)[0] + "/" + dropped
    for args in (["init"], ["user", "create", "bench-user", "--password-stdin"], ["key", "create", "--user", "bench-user"]):
        result = subprocess.run([sys.executable, "-m", "keygate", *args], env=env, input="a long enough password\n",
                                capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"keygate {' '.join(args)}: {result.stderr.strip()}")
    return env, dropped


def _psql(url: str, sql: str) -> None:
    import asyncio

    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--database-url", help="a PostgreSQL server's URL (a database on it is made and dropped)")
    parser.add_argument("--no-bytecode-cache", action="store_true", help="run as the environment says (see the docstring)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="keygate-cli-bench-") as folder:
        env, dropped = _set_up(Path(folder) / "var", args.database_url)
        try:
            figures = measure_cli(env, user="bench-user", runs=args.runs, bytecode_cache=not args.no_bytecode_cache)
        finally:
            if dropped and args.database_url:
                _psql(args.database_url, f'DROP DATABASE IF EXISTS "{dropped}" WITH (FORCE)')
    print(json.dumps(figures, indent=2))
    return 0 if figures["met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
