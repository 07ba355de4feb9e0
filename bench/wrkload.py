"""wrk runs for ``make bench``: one Lua script per scenario, fixed headers or a feed of precomputed ones.

wrk cannot compute an HMAC, so a scenario that needs a fresh nonce on every request is fed: before
each wrk run the bench writes a file of complete header sets (one request per line, tab-separated
values), signed in Python with ``keygate.domain.signature.compute_signature``, with nonces that keep
increasing across the runs (a millisecond-timestamp-like counter per key). The Lua script reads the
file in ``init()``, builds every request once, and ``request()`` walks them. The file is sized from
the rate measured so far, with a wide margin; if wrk still reaches its end it starts again from the
top, counts a ``wrapped``, and the replayed nonces are refused (non-2xx), so the verdict is ERRORS.
"""

from __future__ import annotations

import base64
import json
import math
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keygate.domain.signature import compute_signature

WRK = os.environ.get("BENCH_WRK") or shutil.which("wrk") or "/usr/bin/wrk"  # BENCH_WRK: another wrk binary
TASKSET = shutil.which("taskset")

LUA = r"""
local path = %(path)s
local static = %(headers)s
local feed = %(feed)s
local columns = %(columns)s
local fresh = %(fresh)s
local rows = {}
local n = 0
local i = 0
wrapped = 0

function init(args)
  if feed == nil then
    rows[1] = wrk.format("GET", path, static)
  else
    for line in io.lines(feed) do
      local h = {}
      for k, v in pairs(static) do h[k] = v end
      local c = 1
      for v in string.gmatch(line, "[^\t]+") do h[columns[c]] = v; c = c + 1 end
      rows[#rows + 1] = wrk.format("GET", path, h)
    end
  end
  n = #rows
end

function request()
  i = i + 1
  if i > n then
    i = 1
    if fresh then wrapped = wrapped + 1 end
  end
  return rows[i]
end

local threads = {}
function setup(thread) table.insert(threads, thread) end

function done(summary, latency, requests)
  local w = 0
  for _, t in ipairs(threads) do w = w + (t:get("wrapped") or 0) end
  local e = summary.errors
  io.write(string.format(
    "BENCH_JSON {\"requests\":%%d,\"duration_us\":%%d,\"status_errors\":%%d,\"socket_errors\":%%d,"
    .. "\"p50_us\":%%d,\"p90_us\":%%d,\"p99_us\":%%d,\"mean_us\":%%.1f,\"max_us\":%%d,\"wrapped\":%%d}\n",
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max, w))
end
"""


def pinned(cpu: int | None, argv: list[str]) -> list[str]:
    return [TASKSET, "-c", str(cpu), *argv] if TASKSET and cpu is not None else argv


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, from /proc (0 where /proc is missing)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (VmRSS from /proc), 0 if unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass
class SignedKey:
    """One API key's credentials and the next nonce it will sign (increasing, never reused)."""

    api_key: str
    user_id: int
    secret: str
    next_nonce: int = field(default_factory=lambda: int(time.time() * 1000) * 1000)

    def take(self) -> tuple[str, str, str, str]:
        nonce = str(self.next_nonce)
        self.next_nonce += 1
        return (self.api_key, str(self.user_id), nonce, compute_signature(self.secret, nonce, self.user_id, self.api_key))


SIGNED_COLUMNS = ("APIKey", "UserId", "Nonce", "Signature")
V2_COLUMNS = ("Signature-Input", "Signature")


@dataclass
class Ed25519Key:
    """An ``ed25519`` key: the private key (which keygate never sees) signs APEX's message."""

    api_key: str
    user_id: int
    private_key: Any  # cryptography's Ed25519PrivateKey
    next_nonce: int = field(default_factory=lambda: int(time.time() * 1000) * 1000)

    def take(self) -> tuple[str, str, str, str]:
        nonce = str(self.next_nonce)
        self.next_nonce += 1
        raw = self.private_key.sign(f"{nonce}{self.user_id}{self.api_key}".encode())
        return (self.api_key, str(self.user_id), nonce, base64.b64encode(raw).decode())


class V2Key:
    """Signature v2 (RFC 9421) of ``GET path`` with an HMAC key: a fresh nonce per row, and ``created``
    FUTURE seconds ahead of the moment the row is made (the server allows 2 s of skew), so a row made
    just before a run stays inside the default 5 s window for the whole of a 3 s run.

    Rows are made from a template of ``Signature-Input`` (only ``created`` and ``nonce`` change), checked
    once against the SDK's signer: about 10 times faster than signing each request from scratch."""

    FUTURE = 2
    _CREATED, _NONCE = 1111111111, "NONCEPLACEHOLDER"

    def __init__(self, api_key: str, secret: str, path: str) -> None:
        import hashlib
        import hmac

        from keygate.domain.httpsig import RequestParts, serialize_inner_list, sign_request, signature_params

        self.api_key, self.path = api_key, path
        self._mac = hmac.new(secret.encode(), digestmod=hashlib.sha256)
        self._params = serialize_inner_list(signature_params(("@method", "@path", "@query"), created=self._CREATED,
                                                             nonce=self._NONCE, keyid=api_key, alg="hmac-sha256"))
        self._prefix = f'"@method": GET\n"@path": {path}\n"@query": ?\n"@signature-params": '
        parts = RequestParts("GET", path, "", "", {}, None, False)
        expected = sign_request(parts, keyid=api_key, key=secret.encode(), alg="hmac-sha256",
                                created=self._CREATED, nonce=self._NONCE)
        assert self._row(self._CREATED, self._NONCE) == (expected["Signature-Input"], expected["Signature"])

    def _row(self, created: int, nonce: str) -> tuple[str, str]:
        params = self._params.replace(str(self._CREATED), str(created), 1).replace(self._NONCE, nonce, 1)
        mac = self._mac.copy()
        mac.update((self._prefix + params).encode())
        return (f"kg={params}", f"kg=:{base64.b64encode(mac.digest()).decode()}:")

    def take(self) -> tuple[str, str]:
        return self._row(int(time.time()) + self.FUTURE, secrets.token_urlsafe(12))


class Feed:
    """Rows of header values for one scenario, written to a file before each run.

    ``make_rows(n)`` returns ``n`` rows (tuples of strings, one per column). A fixed list (tokens) is
    cycled; signed keys are walked round-robin, each with its own increasing nonce.
    """

    def __init__(self, columns: Sequence[str], make_rows: Callable[[int], list[tuple[str, ...]]], fresh: bool,
                 max_rows: int | None = None) -> None:
        self.max_rows = max_rows  # rows that age (Signature v2's ``created``) must be made just before use
        self.columns = tuple(columns)
        self.make_rows = make_rows
        self.fresh = fresh  # True: every row may be used once only (a nonce); the file is sized from the rate

    @classmethod
    def signed(cls, keys: Sequence[SignedKey]) -> "Feed":
        def rows(n: int) -> list[tuple[str, ...]]:
            return [keys[i % len(keys)].take() for i in range(n)]

        return cls(SIGNED_COLUMNS, rows, fresh=True)

    @classmethod
    def rows_of(cls, columns: Sequence[str], key: "Ed25519Key | V2Key", max_rows: int | None = None) -> "Feed":
        return cls(columns, lambda n: [key.take() for _ in range(n)], fresh=True, max_rows=max_rows)

    @classmethod
    def cycle(cls, column: str, values: Sequence[str]) -> "Feed":
        return cls((column,), lambda n: [(v,) for v in values], fresh=False)


@dataclass
class Scenario:
    name: str
    path: str
    headers: dict[str, str]
    feed: Feed | None = None
    target: str = "keygate"  # which server: "keygate" or "starlette"
    rates: list[float] = field(default_factory=list)  # measured req/s so far (sizes the next feed file)


@dataclass
class Run:
    summary: dict[str, Any]
    server_cpu_percent: float
    server_cpu_us_per_request: float
    wrk_cpu_percent: float
    feed_rows: int = 0

    @property
    def rate(self) -> float:
        return float(self.summary["requests"]) / (self.summary["duration_us"] / 1e6)


def lua_string(s: str) -> str:
    return json.dumps(s)  # a JSON string of ASCII is a valid Lua string literal


def write_script(sc: Scenario, directory: Path, feed_file: Path | None) -> Path:
    headers = "{" + ", ".join(f"[{lua_string(k)}] = {lua_string(v)}" for k, v in sc.headers.items()) + "}"
    columns = "{" + ", ".join(lua_string(c) for c in (sc.feed.columns if sc.feed else ())) + "}"
    path = directory / f"{''.join(ch for ch in sc.name.lower() if ch.isalnum())[:24]}-{secrets.token_hex(3)}.lua"
    path.write_text(LUA % {"path": lua_string(sc.path), "headers": headers, "columns": columns,
                           "feed": lua_string(str(feed_file)) if feed_file else "nil",
                           "fresh": "true" if sc.feed and sc.feed.fresh else "false"})
    return path


def feed_size(sc: Scenario, seconds: float, reference_rate: float) -> int:
    """Rows for one run of ``seconds``: twice the fastest rate seen (this scenario's or the reference's,
    Ping's), plus a floor, so the file does not run out."""
    fastest = max([reference_rate, *sc.rates, 2000.0])
    return int(math.ceil(fastest * 2.0 * seconds)) + 5000


def run_wrk(base_url: str, sc: Scenario, seconds: float, connections: int, cpu: int | None, server_pid: int,
            work: Path, reference_rate: float = 0.0) -> Run:
    """Run wrk once on ``sc``; return its summary, the server's CPU use (percent of one core and
    microseconds per request) and wrk's CPU use (percent of one core). wrk counts whole seconds:
    ``seconds`` is rounded, to 1 at least."""
    seconds = max(1, round(seconds))
    feed_file: Path | None = None
    rows = 0
    if sc.feed is not None:
        wanted = feed_size(sc, seconds, reference_rate) if sc.feed.fresh else 0
        if sc.feed.max_rows is not None:
            wanted = min(wanted, sc.feed.max_rows)
        rows_list = sc.feed.make_rows(wanted)
        rows = len(rows_list)
        feed_file = work / f"feed-{secrets.token_hex(4)}.tsv"
        feed_file.write_text("".join("\t".join(r) + "\n" for r in rows_list))
    script = write_script(sc, work, feed_file)
    argv = pinned(cpu, [WRK, "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "-s", str(script), base_url])
    try:
        server_before, started = cpu_seconds(server_pid), time.monotonic()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wrk_cpu = 0.0
        while proc.poll() is None:
            wrk_cpu = max(wrk_cpu, cpu_seconds(proc.pid))
            time.sleep(0.1)
        output = proc.stdout.read() if proc.stdout else ""
        elapsed = time.monotonic() - started
        server_cpu = cpu_seconds(server_pid) - server_before
    finally:
        script.unlink(missing_ok=True)
        if feed_file is not None:
            feed_file.unlink(missing_ok=True)
    line = next((ln for ln in output.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"wrk failed ({proc.returncode}) on {sc.name}:\n{output}")
    summary = json.loads(line.split(" ", 1)[1])
    # Busy shares over the load itself (wrk's own duration): the process's lifetime also holds the Lua
    # script's start-up, which reads a fresh-nonce feed of up to 200 000 rows while the server idles,
    # and which made those scenarios' "srv cpu" look 20 points lower than it was.
    loaded = summary["duration_us"] / 1e6 if summary.get("duration_us") else elapsed
    run = Run(summary, server_cpu / loaded * 100, server_cpu / max(summary["requests"], 1) * 1e6, wrk_cpu / elapsed * 100, rows)
    sc.rates.append(run.rate)
    return run
