"""Server logging: text (the default) or one JSON object a line, each carrying its request's id.

``KEYGATE_LOG_FORMAT=json`` makes every line, keygate's and uvicorn's alike, a JSON object with
``time``, ``level``, ``logger``, ``message`` and, for a line written while a request or WebSocket
connection is served, ``request_id``: the id the client (or its proxy) sent in ``X-Request-Id`` when it
is sane (1 to 64 characters of ``A-Z a-z 0-9 . _ : -``), else one keygate made. The same id is echoed
in the reply's ``X-Request-Id`` header. The id lives in a context variable, which is set by the
request middleware (``keygate.api.metrics``) in the task that serves the request, so uvicorn's own
"Exception in ASGI application" line, written in that task, carries it too.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

request_id: ContextVar[str | None] = ContextVar("keygate_request_id", default=None)

_SANE = re.compile(rb"[A-Za-z0-9._:\-]{1,64}\Z")


_PROCESS = os.urandom(4).hex()  # a random prefix per process (each worker has its own) ...
_serial = itertools.count(1)  # ... and a serial number: unique without a system call per request


def pick_request_id(incoming: bytes | None) -> str:
    """The client's ``X-Request-Id`` when it is sane, else a new one (16 hex digits, unique per process)."""
    if incoming is not None and _SANE.match(incoming):
        return incoming.decode("ascii")
    return f"{_PROCESS}{next(_serial) & 0xFFFFFFFF:08x}"


class RequestIdFilter(logging.Filter):
    """Puts the current request id (or ``None``) on every record as ``request_id``."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class NoWireTrace(logging.Filter):
    """Drops the websockets library's wire trace (debug lines ``< TEXT '...'``, ``> TEXT``, ``< aptoken: ...``).

    At ``KEYGATE_LOG_LEVEL=debug`` it logs every frame (its head and tail) and every upgrade header, and
    so pieces of passwords, tokens and signatures: those lines never reach keygate's log.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg
        return not (isinstance(msg, str) and msg[:2] in ("< ", "> ") and record.levelno <= logging.DEBUG)


class JsonFormatter(logging.Formatter):
    """One JSON object a line. Exceptions go in ``exception`` as their traceback text."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None) or request_id.get()
        if rid:
            entry["request_id"] = rid
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


def log_config(log_format: str, level: str) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for uvicorn and keygate: text as uvicorn prints it, or JSON."""
    level = level.upper()
    if log_format == "json":
        formatter: dict[str, Any] = {"()": "keygate.logs.JsonFormatter"}
        access: dict[str, Any] = formatter
    else:
        formatter = {"()": "uvicorn.logging.DefaultFormatter", "fmt": "%(levelprefix)s %(message)s", "use_colors": None}
        access = {"()": "uvicorn.logging.AccessFormatter",
                  "fmt": '%(levelprefix)s %(client_addr)s - "%(request_line)s" %(status_code)s'}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": "keygate.logs.RequestIdFilter"}, "no_wire_trace": {"()": "keygate.logs.NoWireTrace"}},
        "formatters": {"default": formatter, "access": access},
        "handlers": {
            "default": {"class": "logging.StreamHandler", "formatter": "default", "stream": "ext://sys.stderr",
                        "filters": ["no_wire_trace", "request_id"]},
            "access": {"class": "logging.StreamHandler", "formatter": "access", "stream": "ext://sys.stdout",
                       "filters": ["request_id"]},
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": ["access"], "level": level, "propagate": False},
            "keygate": {"handlers": ["default"], "level": level, "propagate": False},
        },
        # Everything else (asyncio, SQLAlchemy, a library's warning) in the same format.
        "root": {"handlers": ["default"], "level": "WARNING"},
    }
