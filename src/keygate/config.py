"""Settings: one typed model, read from ``KEYGATE_*`` environment variables and checked at start.

Every default is a safe one and is written once, here (the throttling ones come from
:class:`~keygate.domain.throttle.ThrottlePolicy`, whose defaults they are). ``Settings.from_env()``
reads the environment; ``Settings(field=...)`` builds settings from its arguments and the defaults
alone, so code and tests that build settings are not changed by whatever the shell exports.

A value the model cannot take stops the start: :class:`InvalidSetting` carries one line per
problem, naming the variable and what it accepts (never the value of a secret). So does a
``KEYGATE_*`` variable that no part of keygate reads: a typo (``..._BIND_SESION_IP``)
would otherwise leave the setting at its default without a word. The few variables read outside
the model are listed in :data:`READ_ELSEWHERE`.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import ipaddress
import math
import os
import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import annotated_types
from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from keygate.domain.replay import ReplayMode
from keygate.domain.secretbox import MASTER_KEY_BYTES
from keygate.domain.throttle import NIST_MAX_CONSECUTIVE_FAILURES, ThrottlePolicy

ENV_PREFIX = "KEYGATE_"

#: ``KEYGATE_*`` variables read outside the settings model (each by the one command that needs it),
#: and prefixes of variables reserved for the test suite. Every other ``KEYGATE_*`` name must be a setting.
READ_ELSEWHERE: Mapping[str, str] = {
    "KEYGATE_PASSWORD": "the CLI's `user create` / `user passwd`",
    "KEYGATE_API_SECRET": "`keygate sign` (the default of --secret-env)",
    "KEYGATE_PREVIOUS_MASTER_KEYS": "the service, when it opens sealed secrets (service/container.py)",
}
READ_ELSEWHERE_PREFIXES = ("KEYGATE_TEST_",)

BOOLEAN_WORDS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")

_THROTTLE = ThrottlePolicy()  # the home of the throttling defaults
_SECRET_FIELDS = frozenset({"master_key", "database_url", "redis_url"})  # values never echoed (may hold a password)


def _boolean(value: object) -> object:
    """Only the eight words of the README (any case); pydantic alone would also take ``t``, ``y``, ``f``, ``n``."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in BOOLEAN_WORDS:
        return BOOLEAN_WORDS[value.strip().lower()]
    raise ValueError("not a boolean")


def _unset_if_empty(value: object) -> object:
    return None if isinstance(value, str) and not value.strip() else value


Boolean = Annotated[bool, BeforeValidator(_boolean), Field(json_schema_extra={"accepts": "true or false (also 1/0, yes/no, on/off, any case)"})]
OptionalPath = Annotated[Path | None, BeforeValidator(_unset_if_empty)]


def _seconds(default: int, minimum: int = 1) -> Any:
    return Field(default, ge=minimum, le=10**9)


class Settings(BaseSettings):
    """Every setting of a keygate process; ``KEYGATE_<FIELD NAME>`` sets a field (see the README's table)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, case_sensitive=False, env_ignore_empty=True, frozen=True, extra="forbid",
        validate_default=False,
    )

    data_dir: Path = Path("var")
    database_url: str = Field("", json_schema_extra={"accepts": "a postgresql:// or sqlite:/// URL"})
    # longest wait for a pooled or a new database connection; PostgreSQL: longest wait for one statement
    database_connect_timeout_seconds: float = Field(2.0, gt=0, le=600)
    database_statement_timeout_seconds: float = Field(10.0, gt=0, le=3600)
    master_key: str | None = Field(None, json_schema_extra={"accepts": "base64 of 32 random bytes"})  # wins over the key file
    master_key_file: OptionalPath = None
    host: str = Field("127.0.0.1", min_length=1, json_schema_extra={"accepts": "an address or host name to listen on"})
    port: int = Field(8000, ge=1, le=65535)
    tls_cert_file: OptionalPath = None  # with tls_key_file: `keygate serve` speaks HTTPS and WSS itself
    tls_key_file: OptionalPath = None
    # `keygate serve`: how long an idle HTTP connection stays open between requests; longer than the
    # idle timeouts of clients and proxies, so that a connection they reuse is never one closed under them
    keep_alive_seconds: int = Field(65, ge=1, le=3600)
    # `keygate serve` (api/connection_guard.py): a request must arrive whole within this long of its first
    # byte; and at most this many open connections from one address (an IPv6 /64), trusted proxies exempt
    request_timeout_seconds: float = Field(10.0, gt=0, le=3600)
    max_connections_per_address: int = Field(256, ge=0, le=1_000_000)  # 0: no bound
    session_idle_seconds: int = _seconds(3600)
    session_max_seconds: int = _seconds(86400)
    pending_2fa_seconds: int = _seconds(300)
    cache_ttl_seconds: float = Field(2.0, ge=0, le=86400)
    redis_url: str | None = Field(None, json_schema_extra={"accepts": "a redis://, rediss:// or unix:// URL"})
    # prefix of every Redis key and channel: one per deployment sharing a Redis
    redis_namespace: str = Field("kg", pattern=r"^[A-Za-z0-9_.:-]+$", max_length=64,
                                 json_schema_extra={"accepts": "letters, digits and _ . : - (at most 64)"})
    trusted_proxies: Annotated[tuple[str, ...], NoDecode] = Field(
        (), json_schema_extra={"accepts": "IP addresses or CIDR ranges (e.g. 10.0.0.0/8), separated by commas or spaces"})
    max_body_bytes: int = Field(65536, ge=1024, le=64 * 1024 * 1024)
    bind_session_ip: Boolean = True
    default_replay_mode: str = Field(ReplayMode.WINDOW.value,
                                     json_schema_extra={"accepts": "one of " + ", ".join(m.value for m in ReplayMode)})
    unique_nonce_window_seconds: int = _seconds(86400)
    # the ``window`` mode: how many accepted nonces a key remembers (domain.replay states the guarantee)
    nonce_window_size: int = Field(4096, ge=16, le=1_000_000)
    require_allowlist_for_withdraw: Boolean = False
    # Signature v2 (RFC 9421): how far ``created`` may lie in the past; each nonce is single-use per key for that long
    signature_window_seconds: int = Field(5, ge=1, le=300)
    require_signature_v2_for_new_keys: Boolean = False
    key_max_idle_days_without_allowlist: int = Field(0, ge=0, le=100_000)  # 0: off
    throttle_ip_failures: int = Field(_THROTTLE.ip_failures, ge=1)
    throttle_key_failures: int = Field(_THROTTLE.key_failures, ge=1)
    throttle_user_failures: int = Field(_THROTTLE.user_failures, ge=1)
    throttle_window_seconds: int = _seconds(_THROTTLE.window_seconds)
    throttle_max_backoff_seconds: int = _seconds(int(_THROTTLE.max_backoff_seconds))
    lockout_failures: int = Field(_THROTTLE.lockout_failures, ge=1, le=NIST_MAX_CONSECUTIVE_FAILURES)
    lockout_seconds: int = _seconds(_THROTTLE.lockout_seconds, minimum=0)  # 0: until an administrator unlocks
    # "pci-dss-4.0.1": lockout after at most 10 failures, for at least 30 minutes (PCI DSS 4.0.1, 8.3.4)
    throttle_profile: Literal["nist", "pci-dss-4.0.1"] = Field("nist", json_schema_extra={"accepts": "nist or pci-dss-4.0.1"})
    known_address_days: int = Field(30, ge=0, le=3650)  # an address a user signed in from stays trusted this long
    refusal_seconds: float = Field(0.1, ge=0, le=10)  # every refusal of credentials takes at least this long
    password_hash_concurrency: int = Field(0, ge=0, le=1024)  # Argon2 hashes at once; 0: one less than the CPUs, at least 1
    password_hash_queue: int = Field(64, ge=1, le=100_000)  # untrusted password sign-ins waiting for a hash; more get 429
    log_level: str = Field("info", json_schema_extra={"accepts": "one of " + ", ".join(LOG_LEVELS)})
    # "200": refusals on /AP/ paths answer HTTP 200 with the APEX error body, for SDKs that raise on any
    # status of 400 or more before reading the body (X-Keygate-Status carries the 4xx); "4xx" is the default
    refusal_status: Literal["4xx", "200"] = Field("4xx", json_schema_extra={"accepts": "4xx or 200"})
    # json: one object a line, with request_id
    log_format: Literal["text", "json"] = Field("text", json_schema_extra={"accepts": "text or json"})
    metrics: Boolean = True  # Prometheus metrics at /metrics (keygate.telemetry)

    # ----- checks beyond the types ---------------------------------------------------------------
    @field_validator("database_url", mode="before")
    @classmethod
    def _database_url(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        url = _normalize_db_url(value.strip())
        if url and not re.match(r"^(sqlite|postgresql)(\+\w+)?://", url):
            raise ValueError("not a PostgreSQL or SQLite URL")
        return url

    @field_validator("master_key", mode="before")
    @classmethod
    def _master_key(cls, value: object) -> object:
        value = _unset_if_empty(value)
        if isinstance(value, str):
            value = value.strip()
            try:
                raw = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("not base64") from None
            if len(raw) != MASTER_KEY_BYTES:
                raise ValueError(f"{len(raw)} bytes, not {MASTER_KEY_BYTES}")
        return value

    @field_validator("redis_url", mode="before")
    @classmethod
    def _redis_url(cls, value: object) -> object:
        value = _unset_if_empty(value)
        if isinstance(value, str):
            value = value.strip()
            if not re.match(r"^(redis|rediss|unix)://.", value):
                raise ValueError("not a Redis URL")
        return value

    @field_validator("host", "redis_namespace", mode="before")
    @classmethod
    def _stripped(cls, value: object) -> object:
        return value.strip() if isinstance(value, str) else value

    @field_validator("cache_ttl_seconds")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("not a finite number")
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _proxies(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.replace(",", " ").split()
        if isinstance(value, (list, tuple)):
            entries = tuple(str(v).strip() for v in value if str(v).strip())
            for entry in entries:
                try:
                    ipaddress.ip_network(entry, strict=False)
                except ValueError:
                    raise PydanticCustomError("detail", f"{entry!r} is not an IP address or CIDR range") from None
            return entries
        return value

    @field_validator("default_replay_mode", "log_level", "refusal_status", "log_format", "throttle_profile", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("default_replay_mode")
    @classmethod
    def _replay_mode(cls, value: str) -> str:
        if value not in {m.value for m in ReplayMode}:
            raise ValueError("not a replay mode")
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        if value not in LOG_LEVELS:
            raise ValueError("not a log level")
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> "Settings":
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("KEYGATE_TLS_CERT_FILE (--tls-cert) and KEYGATE_TLS_KEY_FILE (--tls-key) go together: "
                             "give both a certificate and its private key, or neither")
        return self

    # ----- derived values ------------------------------------------------------------------------
    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'keygate.db'}"

    @property
    def resolved_master_key_file(self) -> Path:
        return self.master_key_file or self.data_dir / "master.key"

    @property
    def serves_tls(self) -> bool:
        return self.tls_cert_file is not None

    # ----- building ------------------------------------------------------------------------------
    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Constructor arguments only: the environment is read by :meth:`from_env`, and nothing reads a ``.env`` file."""
        return (init_settings,)

    @classmethod
    def from_env(
        cls, *, option_names: Mapping[str, str] | None = None, also_read: Collection[str] = (), **overrides: object
    ) -> "Settings":
        """The settings of the environment, ``overrides`` winning; raises :class:`InvalidSetting`.

        ``option_names`` names the command-line option an override came from (for the message);
        ``also_read`` lists more ``KEYGATE_*`` variables the caller reads itself.
        """
        problems = unknown_variables(os.environ, also_read)
        values: dict[str, Any] = {**EnvSettingsSource(cls)(), **overrides}
        try:
            settings = cls(**values)
        except ValidationError as exc:
            labels = {name: option_names[name] for name in overrides if option_names and name in option_names}
            raise InvalidSetting(problems + _explain(exc, labels)) from None
        if problems:
            raise InvalidSetting(problems)
        return settings


class InvalidSetting(ValueError):
    """Settings that cannot be used; ``lines`` holds one line per problem, ready for an operator."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def setting_names() -> dict[str, str]:
    """Environment variable → field name, for every field of :class:`Settings`."""
    return {env_name(field): field for field in Settings.model_fields}


def unknown_variables(environ: Mapping[str, str], also_read: Collection[str] = ()) -> list[str]:
    """One line for each ``KEYGATE_*`` variable that neither the model nor :data:`READ_ELSEWHERE` knows."""
    known = set(setting_names()) | set(READ_ELSEWHERE) | {n.upper() for n in also_read}
    lines = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in known or upper.startswith(READ_ELSEWHERE_PREFIXES):
            continue
        guess = difflib.get_close_matches(upper, sorted(known), n=1, cutoff=0.75)
        hint = f" (did you mean {guess[0]}?)" if guess else ""
        lines.append(f"{name} is not a keygate setting{hint}; unset it: unknown KEYGATE_ variables are refused "
                     "so that a misspelt setting cannot silently keep its default (see the README's configuration table)")
    return lines


def accepts(field: str) -> str:
    """What a field accepts, in words: from its ``accepts`` note, or from its type and bounds."""
    info = Settings.model_fields[field]
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    if "accepts" in extra:
        return str(extra["accepts"])
    if info.annotation in (Path, Path | None):
        return "a file or folder path"
    low = next((m.ge for m in info.metadata if isinstance(m, annotated_types.Ge)), None)
    high = next((m.le for m in info.metadata if isinstance(m, annotated_types.Le)), None)
    kind = "a whole number" if info.annotation is int else "a number"
    unit = next((f" of {u}" for u in ("seconds", "bytes", "days", "failures") if f"_{u}_" in f"_{field}_"), "")
    if low is not None and high is not None:
        return f"{kind}{unit} from {low} to {high}"
    if low is not None:
        return f"{kind}{unit}, {low} or more"
    return kind + unit


def _explain(exc: ValidationError, labels: Mapping[str, str]) -> list[str]:
    lines: list[str] = []
    seen: set[str] = set()
    for error in exc.errors(include_url=False):
        if not error["loc"]:
            lines.append(str(error["msg"]).removeprefix("Value error, "))
            continue
        field = str(error["loc"][0])
        if field in seen:
            continue  # a union type reports each of its members
        seen.add(field)
        if field not in Settings.model_fields:
            lines.append(f"{field} is not a setting")
            continue
        label = labels.get(field, env_name(field))
        shown = " (value not shown)" if field in _SECRET_FIELDS else f"={error['input']!r}"
        # a check's own words where they add to "what it accepts" (which entry of a list is wrong)
        reason = f" ({error['msg']})" if error["type"] == "detail" and field not in _SECRET_FIELDS else ""
        lines.append(f"{label}{shown} is refused{reason}: it accepts {accepts(field)}")
    return lines


def _normalize_db_url(url: str) -> str:
    """Accept plain ``postgresql://`` and ``sqlite://`` URLs and pick the async driver."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url[len("sqlite:///"):]
    return url
