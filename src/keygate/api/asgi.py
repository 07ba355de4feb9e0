"""ASGI entry point for multi-worker servers: ``uvicorn keygate.api.asgi:app``.

The settings are checked here, at import, so that a bad ``KEYGATE_*`` variable stops uvicorn with
one line per problem rather than a traceback.
"""

import sys

from keygate.api import connection_guard
from keygate.api.app import create_app
from keygate.config import InvalidSetting, Settings

# uvicorn's exit status for a worker that cannot start (uvicorn.config.STARTUP_FAILURE): with
# --workers N its supervisor then stops, where after any other exit it would start the worker again.
STARTUP_FAILURE = 3


def _refuse(lines: list[str]) -> None:
    for line in lines:
        print(f"error: {line}", file=sys.stderr, flush=True)
    raise SystemExit(STARTUP_FAILURE)


try:
    _settings = Settings.from_env()
except InvalidSetting as exc:
    _refuse(exc.lines)
if _settings.serves_tls:
    _refuse(["KEYGATE_TLS_CERT_FILE and KEYGATE_TLS_KEY_FILE are read by `keygate serve` only; "
             "uvicorn run by itself takes --ssl-certfile and --ssl-keyfile (unset the two variables)"])

connection_guard.configure(_settings)  # for uvicorn's --http keygate.api.connection_guard:GuardedHttpTools
app = create_app(_settings)
