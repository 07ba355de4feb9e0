"""How fast the console's operator pages answer: users, keys, sessions (first page, next page, searches)
and the audit trail, signed in as an administrator the way a browser is (login form, CSRF token,
session cookie).

    from operator_views import measure_views
    times = measure_views("http://127.0.0.1:8080", "admin", "password")   # {name: seconds}

Each page is fetched ``repeats`` times after one warm-up fetch; the figure is the median wall time of
a GET (the whole answer read). The searches use rows found on the first pages: a username and its
user id from the users page, an API-key prefix (12 characters) from the keys page.

Run alone against a server that is up (e.g. one filled by ``bench/scale_fill.py``):
``python bench/operator_views.py URL ADMIN PASSWORD`` prints the table; ``--fill N`` first makes a
fresh SQLite (or ``--database-url``) database with N keys and N sessions, starts a server on it and
measures that.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from typing import Any

import httpx

TARGET_SECONDS = 0.2
_CSRF = re.compile(r'name="csrf_token" value="([^"]*)"')
_USER_ROW = re.compile(r'<tr data-user="([^"]+)">\s*<td data-label="ID">(\d+)</td>')
_KEY_ROW = re.compile(r'<tr data-key="([0-9a-f]+)"')
_NEXT = re.compile(r'href="[^"]*?(/admin/\w+\?[^"]*)" rel="next"')


def sign_in(http: httpx.Client, base_url: str, username: str, password: str) -> None:
    """Sign in to the console as a browser does: the login page's CSRF token, then the form."""
    page = http.get(f"{base_url}/console/login")
    page.raise_for_status()
    token = _CSRF.search(page.text)
    if token is None:
        raise RuntimeError("the console's login page has no CSRF field")
    r = http.post(f"{base_url}/console/login", data={"csrf_token": token.group(1), "username": username,
                                                       "password": password})
    if r.status_code != 200 or not str(r.url).rstrip("/").endswith("/console"):
        raise RuntimeError(f"console sign-in as {username} failed: HTTP {r.status_code}")


def _timed(http: httpx.Client, url: str, repeats: int) -> tuple[float, str]:
    first = http.get(url)  # warm-up (and the page's text, to find search terms)
    if first.status_code != 200:
        raise RuntimeError(f"GET {url} answered {first.status_code}")
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        r = http.get(url)
        r.read()
        times.append(time.perf_counter() - started)
        if r.status_code != 200:
            raise RuntimeError(f"GET {url} answered {r.status_code}")
    return statistics.median(times), first.text


def measure_views(base_url: str, admin_username: str, admin_password: str, repeats: int = 5) -> dict[str, float]:
    """Median seconds per GET of each operator page (see the module docstring), by name."""
    base_url = base_url.rstrip("/")
    console = f"{base_url}/console"
    results: dict[str, float] = {}
    with httpx.Client(follow_redirects=True, timeout=60) as http:
        sign_in(http, base_url, admin_username, admin_password)

        def measure(name: str, path: str) -> str:
            results[name], text = _timed(http, console + path, repeats)
            return text

        users_page = measure("users: first page", "/admin/users")
        keys_page = measure("keys: first page", "/admin/keys")
        sessions_page = measure("sessions: first page", "/admin/sessions")
        for name, text in (("users", users_page), ("keys", keys_page), ("sessions", sessions_page)):
            following = _NEXT.search(text)
            if following:
                measure(f"{name}: next page", following.group(1).replace("&amp;", "&"))
        found_users = [(name, int(user_id)) for name, user_id in _USER_ROW.findall(users_page)]
        found_keys = _KEY_ROW.findall(keys_page)
        if found_users:
            username, user_id = found_users[-1]
            measure("users: search by username", f"/admin/users?q={username}")
            measure("users: search by user id", f"/admin/users?q={user_id}")
            measure("keys: search by username", f"/admin/keys?q={username}")
            measure("keys: search by user id", f"/admin/keys?q={user_id}")
            measure("sessions: search by username", f"/admin/sessions?q={username}")
            measure("sessions: search by user id", f"/admin/sessions?q={user_id}")
        if found_keys:
            measure("keys: search by key prefix", f"/admin/keys?q={found_keys[-1][:12]}")
        measure("audit: 100 newest events", "/admin/audit")
        measure("audit: 1000 newest events", "/admin/audit?limit=1000")
    return results


def table(results: dict[str, float]) -> str:
    width = max(len(name) for name in results)
    lines = [f"{'page'.ljust(width)}  seconds  within {TARGET_SECONDS} s"]
    for name, seconds in results.items():
        lines.append(f"{name.ljust(width)}  {seconds:7.3f}  {'yes' if seconds <= TARGET_SECONDS else 'NO'}")
    return "\n".join(lines)


def _filled_server(count: int, database_url: str) -> tuple[Any, str, str, str]:
    """Fill a fresh database with ``count`` keys and sessions and start a server on it."""
    import base64
    import os
    import secrets
    import socket
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    from keygate.config import Settings
    from scale_fill import fill

    data_dir = Path(tempfile.mkdtemp(prefix="keygate-views-"))
    settings = Settings(data_dir=data_dir, database_url=database_url,
                        master_key=os.environ.get("KEYGATE_MASTER_KEY") or base64.b64encode(secrets.token_bytes(32)).decode())
    filled = fill(settings, users=max(1, count // 50), keys=count, sessions=count)
    print(f"filled {filled.users} users, {filled.keys} keys, {filled.sessions} sessions in {filled.seconds:.1f} s")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    env = {**os.environ, "KEYGATE_DATA_DIR": str(data_dir), "KEYGATE_DATABASE_URL": settings.resolved_database_url,
           "KEYGATE_MASTER_KEY": settings.master_key or "", "KEYGATE_HOST": "127.0.0.1", "KEYGATE_PORT": str(port),
           "KEYGATE_LOG_LEVEL": "warning"}
    log = (data_dir / "server.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "keygate", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"the keygate server did not start:\n{(data_dir / 'server.log').read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/AP/Ping", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    return proc, f"http://127.0.0.1:{port}", filled.admin_username, filled.password


def main() -> int:
    parser = argparse.ArgumentParser(description="Time the console's operator pages.")
    parser.add_argument("base_url", nargs="?")
    parser.add_argument("admin_username", nargs="?")
    parser.add_argument("admin_password", nargs="?")
    parser.add_argument("--fill", type=int, help="fill a fresh database with this many keys and sessions first")
    parser.add_argument("--database-url", default="", help="with --fill: an empty PostgreSQL database (default SQLite)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    proc = None
    if args.fill:
        proc, base_url, username, password = _filled_server(args.fill, args.database_url)
    elif args.base_url and args.admin_username and args.admin_password:
        base_url, username, password = args.base_url, args.admin_username, args.admin_password
    else:
        parser.error("give URL ADMIN PASSWORD, or --fill N")
    try:
        results = measure_views(base_url, username, password, args.repeats)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
    print(table(results))
    return 0 if all(s <= TARGET_SECONDS for s in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
