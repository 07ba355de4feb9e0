"""Settings, read from ``KEYGATE_*`` environment variables. Every default is a safe one."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from None


def _bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("var")
    database_url: str = ""
    master_key: str | None = None  # base64 of 32 bytes; wins over the key file
    master_key_file: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    session_idle_seconds: int = 3600
    session_max_seconds: int = 86400
    pending_2fa_seconds: int = 300
    cache_ttl_seconds: float = 2.0
    redis_url: str | None = None
    redis_namespace: str = "kg"  # prefix of every Redis key and channel: one per deployment sharing a Redis
    trusted_proxies: tuple[str, ...] = field(default_factory=tuple)
    max_body_bytes: int = 65536
    bind_session_ip: bool = True
    default_replay_mode: str = "increasing"
    unique_nonce_window_seconds: int = 86400
    require_allowlist_for_withdraw: bool = False
    key_max_idle_days_without_allowlist: int = 0
    throttle_ip_failures: int = 20
    throttle_key_failures: int = 10
    throttle_user_failures: int = 10
    throttle_window_seconds: int = 900
    throttle_max_backoff_seconds: int = 900
    lockout_failures: int = 50
    lockout_seconds: int = 3600
    throttle_profile: str = "nist"  # or "pci-dss-4.0.1": lockout after at most 10 failures, for at least 30 minutes
    known_address_days: int = 30  # an address a user signed in from stays trusted for that user this long
    refusal_seconds: float = 0.1  # every refusal of credentials takes at least this long, whatever its cause
    password_hash_concurrency: int = 0  # Argon2 hashes at once; 0: one less than the CPUs, at least 1
    password_hash_queue: int = 64  # untrusted password sign-ins waiting for a hash; more get 429 at once
    log_level: str = "info"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'keygate.db'}"

    @property
    def resolved_master_key_file(self) -> Path:
        return self.master_key_file or self.data_dir / "master.key"

    @classmethod
    def from_env(cls, **overrides: object) -> "Settings":
        env = os.environ
        data_dir = Path(env.get("KEYGATE_DATA_DIR") or "var")
        values: dict[str, object] = dict(
            data_dir=data_dir,
            database_url=_normalize_db_url(env.get("KEYGATE_DATABASE_URL", "")),
            master_key=env.get("KEYGATE_MASTER_KEY") or None,
            master_key_file=Path(env["KEYGATE_MASTER_KEY_FILE"]) if env.get("KEYGATE_MASTER_KEY_FILE") else None,
            host=env.get("KEYGATE_HOST") or "127.0.0.1",
            port=_int("KEYGATE_PORT", 8000),
            session_idle_seconds=_int("KEYGATE_SESSION_IDLE_SECONDS", 3600),
            session_max_seconds=_int("KEYGATE_SESSION_MAX_SECONDS", 86400),
            pending_2fa_seconds=_int("KEYGATE_PENDING_2FA_SECONDS", 300),
            cache_ttl_seconds=float(env.get("KEYGATE_CACHE_TTL_SECONDS") or 2.0),
            redis_url=env.get("KEYGATE_REDIS_URL") or None,
            redis_namespace=env.get("KEYGATE_REDIS_NAMESPACE") or "kg",
            trusted_proxies=tuple(p for p in (env.get("KEYGATE_TRUSTED_PROXIES") or "").replace(",", " ").split() if p),
            max_body_bytes=_int("KEYGATE_MAX_BODY_BYTES", 65536),
            bind_session_ip=_bool("KEYGATE_BIND_SESSION_IP", True),
            default_replay_mode=(env.get("KEYGATE_DEFAULT_REPLAY_MODE") or "increasing").strip().lower(),
            unique_nonce_window_seconds=_int("KEYGATE_UNIQUE_NONCE_WINDOW_SECONDS", 86400),
            require_allowlist_for_withdraw=_bool("KEYGATE_REQUIRE_ALLOWLIST_FOR_WITHDRAW", False),
            key_max_idle_days_without_allowlist=_int("KEYGATE_KEY_MAX_IDLE_DAYS_WITHOUT_ALLOWLIST", 0),
            throttle_ip_failures=_int("KEYGATE_THROTTLE_IP_FAILURES", 20),
            throttle_key_failures=_int("KEYGATE_THROTTLE_KEY_FAILURES", 10),
            throttle_user_failures=_int("KEYGATE_THROTTLE_USER_FAILURES", 10),
            throttle_window_seconds=_int("KEYGATE_THROTTLE_WINDOW_SECONDS", 900),
            throttle_max_backoff_seconds=_int("KEYGATE_THROTTLE_MAX_BACKOFF_SECONDS", 900),
            lockout_failures=_int("KEYGATE_LOCKOUT_FAILURES", 50),
            lockout_seconds=_int("KEYGATE_LOCKOUT_SECONDS", 3600),
            throttle_profile=(env.get("KEYGATE_THROTTLE_PROFILE") or "nist").strip().lower(),
            known_address_days=_int("KEYGATE_KNOWN_ADDRESS_DAYS", 30),
            refusal_seconds=float(env.get("KEYGATE_REFUSAL_SECONDS") or 0.1),
            password_hash_concurrency=_int("KEYGATE_PASSWORD_HASH_CONCURRENCY", 0),
            password_hash_queue=_int("KEYGATE_PASSWORD_HASH_QUEUE", 64),
            log_level=env.get("KEYGATE_LOG_LEVEL") or "info",
        )
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]


def _normalize_db_url(url: str) -> str:
    """Accept plain ``postgresql://`` and ``sqlite://`` URLs and pick the async driver."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url[len("sqlite:///"):]
    return url
