"""Prometheus metrics: every metric keygate exports, defined once, with bounded label values.

Every layer counts here (the store its database and Redis errors, the service its audit events and
cache lookups, the API its requests); ``keygate.api.metrics`` serves them at ``/metrics``. No label
value comes from a client: endpoint names, audit actions and reasons, cache and queue names are
fixed sets in the code, so a caller of random paths or a failing client from many addresses cannot
make new series. Nothing secret is ever a label: API keys, user ids and addresses are left out too.

The hot path does not touch prometheus-client (whose increments take a lock, and in multiprocess
mode write a memory-mapped file): requests, cache lookups and audit events are counted in plain
Python numbers (``LocalCounter``, ``LocalHistogram``; everything runs on the event loop's thread),
and ``sync()`` adds them to the Prometheus series before every scrape and once a second.

With several worker processes (``keygate serve --workers N``), ``serve`` points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh folder before any worker starts; prometheus-client then keeps
each value in a memory-mapped file per process, and ``/metrics`` on any worker reports the sum over
all of them (see docs/observability.md).
"""

from __future__ import annotations

import os
import re
from bisect import bisect_left
from typing import Any

PREFIX = "keygate_"


class _Family:
    """One prometheus-client metric, made (and prometheus-client imported) when first needed.

    A server needs it at its first ``sync()`` (once a second, and before every scrape), which makes
    every family, so ``/metrics`` lists them all as before; a CLI command counts locally and never
    syncs, so it never loads prometheus-client (issue 12: the CLI starts with what it uses).
    """

    _all: list[_Family] = []

    def __init__(self, kind: str, *args: Any, children: tuple[str, ...] = (), **kwargs: Any) -> None:
        self._kind, self._args, self._kwargs, self._children = kind, args, kwargs, children
        self._metric: Any = None
        _Family._all.append(self)

    @property
    def metric(self) -> Any:
        if self._metric is None:
            import prometheus_client

            # no ``*_created`` series: Prometheus does not need them, and they double the output
            prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
            self._metric = getattr(prometheus_client, self._kind)(*self._args, **self._kwargs)
            for child in self._children:  # series that are listed (at 0) before anything is counted
                self._metric.labels(child)
        return self._metric

    def labels(self, *values: str) -> Any:
        return self.metric.labels(*values)

    def __getattr__(self, name: str) -> Any:  # the metric's own attributes (``collect``, ``_upper_bounds``, ...)
        if name in ("_kind", "_args", "_kwargs", "_children", "_metric"):
            raise AttributeError(name)
        return getattr(self.metric, name)


_made = False
_pending: list[_Deferred] = []


def _make_all() -> None:
    """Make every family, and the series of every ``_Deferred`` so far (listed at 0, as before)."""
    global _made
    if _made:
        return
    for family in _Family._all:
        family.metric  # noqa: B018  (made on first access)
    for deferred in _pending:
        deferred.resolve()
    _pending.clear()
    _made = True


class _Deferred:
    """A labelled series of a ``_Family``: looked up at once in a process that has synced its metrics
    (a server), else at the first ``sync()``, which a CLI command never calls."""

    __slots__ = ("_child", "_family", "_values")

    def __init__(self, family: _Family, *values: str) -> None:
        self._family, self._values = family, values
        self._child: Any = None
        if _made:
            self.resolve()
        else:
            _pending.append(self)

    def resolve(self) -> Any:
        if self._child is None:
            self._child = self._family.labels(*self._values)
        return self._child

    def inc(self, amount: float = 1) -> None:
        (self._child or self.resolve()).inc(amount)


QUEUES = ("audit", "session_writes", "key_last_used")
REDIS_COMPONENTS = ("state", "bus", "sessions")

REQUESTS = _Family(
    "Counter", "keygate_requests", "HTTP requests and WebSocket frames answered, by endpoint and HTTP status",
    ["endpoint", "status"],
)
LATENCY = _Family(
    "Histogram", "keygate_request_duration_seconds", "Time from a request's arrival to the end of its reply, by endpoint",
    ["endpoint"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
AUDIT_EVENTS = _Family(
    "Counter", "keygate_audit_events", "Audit events (every authentication outcome among them), by action, outcome and reason",
    ["action", "outcome", "reason"],
)
CACHE_LOOKUPS = _Family(
    "Counter", "keygate_cache_lookups", "In-process cache lookups, by cache and result (hit or miss)", ["cache", "result"],
)
QUEUE_DEPTH = _Family(
    "Gauge", "keygate_queue_depth", "Items waiting in a batched writer, sampled every second just before it is flushed",
    ["queue"], multiprocess_mode="livesum", children=QUEUES,
)
DATABASE_ERRORS = _Family("Counter", "keygate_database_errors", "Errors raised by the database driver, by error class", ["error"])
REDIS_ERRORS = _Family("Counter", "keygate_redis_errors", "Redis commands that failed, by component", ["component"],
                       children=REDIS_COMPONENTS)

DATABASE_ERROR_CLASSES = frozenset({
    "IntegrityError", "OperationalError", "InterfaceError", "ProgrammingError", "DataError", "InternalError",
    "NotSupportedError", "DatabaseError", "DBAPIError", "TimeoutError", "DisconnectionError", "connection",
})


def multiprocess_dir() -> str | None:
    """The folder of the per-process metric files when running several workers, else ``None``."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir") or None


# ----- cheap local counts, added to the Prometheus series by sync() ------------------------------
_locals: list[LocalCounter | LocalHistogram] = []


class LocalCounter:
    """One counter series, counted as a plain integer; ``inc()`` is all the hot path pays."""

    __slots__ = ("_child", "_synced", "value")

    def __init__(self, child: Any) -> None:
        self.value = 0
        self._synced = 0
        self._child = child
        _locals.append(self)

    def inc(self) -> None:
        self.value += 1

    def sync(self) -> None:
        delta = self.value - self._synced
        if delta:
            self._child.inc(delta)
            self._synced += delta


class LocalHistogram:
    """One histogram series, with its bucket counts and sum kept locally until ``sync()``."""

    __slots__ = ("_bounds", "_child", "_counts", "_sum")

    def __init__(self, child: Any) -> None:
        self._child = child
        self._bounds = list(child._upper_bounds)  # prometheus-client's buckets, +Inf last
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        _locals.append(self)

    def observe(self, seconds: float) -> None:
        self._counts[bisect_left(self._bounds, seconds)] += 1  # the first bucket whose bound is >= the value
        self._sum += seconds

    def sync(self) -> None:
        counts, total = self._counts, self._sum
        if not any(counts):
            return
        self._counts, self._sum = [0] * len(counts), 0.0
        # prometheus-client's own Histogram.observe does exactly this, one observation at a time.
        for bucket, count in zip(self._child._buckets, counts):
            if count:
                bucket.inc(count)
        self._child._sum.inc(total)


def sync() -> None:
    """Add every local count to its Prometheus series (before a scrape, and once a second)."""
    _make_all()
    for local in _locals:
        local.sync()


# ----- audit reasons ------------------------------------------------------------------------------
# The internal reasons the code records, as they are; anything else is folded into one of the
# patterns below or into "other", so a reason that carries a value (an address, a count) never
# becomes a series of its own.
KNOWN_REASONS = frozenset({
    "", "unknown api key", "api key belongs to another user", "signature mismatch", "api key expired",
    "api key without allowlist unused too long", "user locked", "nonce not an unsigned integer",
    "nonce not increasing (replay?)", "nonce reused (replay?)", "unknown user", "wrong password", "wrong code",
    "administrator", "cli", "console", "wrong 2fa code", "unknown or expired pending 2fa token",
    "nonce already used or below the key's floor (replay?)", "nonce at or below the floor of an earlier mode (replay?)",
    "2fa code already used", "username differed from an older one only in case",
    # Signature v2 (service/http_signatures.py) and keys that require it
    "v2 alg is not the key's", "v2 created outside the window", "v2 signature expired", "v2 nonce reused (replay?)",
    "api key requires signature v2",
})
_PATTERNS = (
    (re.compile(r"client ip .* not in allowlist\Z", re.DOTALL), "client ip not in allowlist"),
    (re.compile(r"\d+ consecutive failed authentications\Z"), "consecutive failed authentications"),
)
_ACTION = re.compile(r"[a-z0-9_.\-]{1,48}\Z")


def normalise_reason(reason: str | None) -> str:
    if reason is None or reason in KNOWN_REASONS:
        return reason or ""
    for pattern, label in _PATTERNS:
        if pattern.match(reason):
            return label
    return "other"


def _bounded_word(value: str) -> str:
    return value if _ACTION.match(value) else "other"


_audit_children: dict[tuple[str, str, str | None], Any] = {}


def count_audit(action: str, outcome: str, reason: str | None) -> None:
    """Count one audit event. The bound counters are kept per exact (action, outcome, reason) for
    the reasons that are fixed strings, so the hot path (a success per authentication) costs one
    dictionary lookup and one increment."""
    key = (action, outcome, reason)
    child = _audit_children.get(key)
    if child is None:
        if (reason is None or reason in KNOWN_REASONS) and len(_audit_children) < 4096:
            child = _audit_children[key] = LocalCounter(
                _Deferred(AUDIT_EVENTS, _bounded_word(action), _bounded_word(outcome), normalise_reason(reason)))
        else:  # a reason that carries a value: counted directly, never kept per value
            AUDIT_EVENTS.labels(_bounded_word(action), _bounded_word(outcome), normalise_reason(reason)).inc()
            return
    child.inc()


# ----- errors -------------------------------------------------------------------------------------
def database_error(exc: BaseException | None) -> None:
    """Count a driver error by its SQLAlchemy class; ``None``: a connection that could not be opened."""
    name = "connection" if exc is None else type(exc).__name__
    DATABASE_ERRORS.labels(name if name in DATABASE_ERROR_CLASSES else "other").inc()


def redis_error(component: str) -> None:
    REDIS_ERRORS.labels(component).inc()


# ----- caches and queues --------------------------------------------------------------------------
class CacheCounter:
    """The two bound counters of one named cache: ``hit()`` and ``miss()`` cost one increment each."""

    __slots__ = ("hit", "miss")

    def __init__(self, name: str | None) -> None:
        if name is None:
            self.hit = self.miss = _noop
        else:
            self.hit = LocalCounter(_Deferred(CACHE_LOOKUPS, name, "hit")).inc
            self.miss = LocalCounter(_Deferred(CACHE_LOOKUPS, name, "miss")).inc


def _noop() -> None:
    return None


_cache_counters: dict[str | None, CacheCounter] = {}


def cache_counter(name: str | None) -> CacheCounter:
    """The counters of the caches called ``name`` (every ``TTLCache`` of that name shares them)."""
    found = _cache_counters.get(name)
    if found is None:
        found = _cache_counters[name] = CacheCounter(name)
    return found


_queue_children: dict[str, Any] = {}


def sample_queue(queue: str, depth: int) -> None:
    child = _queue_children.get(queue)
    if child is None:
        child = _queue_children[queue] = QUEUE_DEPTH.labels(queue)
    child.set(depth)


def forget_process() -> None:
    """At a worker's clean shutdown: drop its live gauges from the shared folder (multiprocess mode)."""
    if multiprocess_dir():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
