"""The schema, in SQLAlchemy Core. Alembic migrations under ``migrations/`` create exactly this."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    false,
    func,
)
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC, returns aware UTC, on SQLite and PostgreSQL alike."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc)


metadata = MetaData()

users = Table(
    "users",
    metadata,
    Column("user_id", Integer, primary_key=True, autoincrement=True),
    Column("username", String(64), nullable=False, unique=True),
    Column("email", String(254), nullable=False, default=""),
    Column("password_hash", String(255), nullable=False),
    Column("is_admin", Boolean, nullable=False, default=False),
    Column("locked", Boolean, nullable=False, default=False),
    Column("locked_until", UTCDateTime, nullable=True),
    Column("sealed_totp_secret", LargeBinary, nullable=True),
    Column("sealed_pending_totp", LargeBinary, nullable=True),
    Column("account_id", Integer, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    # Every session of the user made before this time is refused (password reset, lock, sign-out everywhere).
    Column("sessions_valid_after", UTCDateTime, nullable=True),
    Column("last_totp_step", Integer, nullable=True),  # the last TOTP time step signed in with (claimed once)
)
# Usernames are unique without regard to case (migration 0004).
Index("uq_users_username_lower", func.lower(users.c.username), unique=True)

api_keys = Table(
    "api_keys",
    metadata,
    Column("api_key", String(64), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.user_id", ondelete="CASCADE"), nullable=False),
    Column("label", String(100), nullable=False, default=""),
    Column("permissions", String(100), nullable=False, default=""),
    Column("ip_allowlist", Text, nullable=False, default=""),
    Column("sealed_secret", LargeBinary, nullable=True),  # None for an ed25519 key (migration 0008)
    Column("nonce", String(32), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("last_used_at", UTCDateTime, nullable=True),
    Column("replay_mode", String(16), nullable=False, default="compatible"),
    Column("last_nonce", String(20), nullable=True),
    Column("expires_at", UTCDateTime, nullable=True),
    Column("sealed_previous_secret", LargeBinary, nullable=True),
    Column("previous_secret_expires_at", UTCDateTime, nullable=True),
    # Which secret is current: one more at every rotation. A key session remembers the serial that made it.
    Column("secret_serial", Integer, nullable=False, default=1, server_default="1"),
    # After a switch into the ``unique`` mode, numeric nonces up to ``replay_floor`` stay refused until
    # ``replay_floor_until`` (the other modes may have accepted them; see domain.replay).
    Column("replay_floor", String(20), nullable=True),
    Column("replay_floor_until", UTCDateTime, nullable=True),
    # The ``window`` mode (domain.replay): nonces at or below the floor are refused; ``nonce_spread``:
    # the key sends random nonces; ``nonce_count``: how many it remembers in ``used_nonces``.
    Column("nonce_floor", String(20), nullable=True),
    Column("nonce_spread", Boolean, nullable=False, default=False, server_default=false()),
    Column("nonce_count", Integer, nullable=False, default=0, server_default="0"),
    # The canonical client address of the key's last use (written with ``last_used_at``).
    Column("last_used_ip", String(45), nullable=True),
    # "hmac" (a sealed secret) or "ed25519" (a public key, standard base64 of its 32 raw bytes; nothing
    # that can sign). ``previous_public_key``: an ed25519 rotation's grace, until previous_secret_expires_at.
    Column("key_type", String(16), nullable=False, default="hmac", server_default="hmac"),
    Column("public_key", String(64), nullable=True),
    Column("previous_public_key", String(64), nullable=True),
    # Signature v2 only (migration 0009): APEX signatures of the key are refused.
    Column("requires_v2", Boolean, nullable=False, default=False, server_default=false()),
    Index("ix_api_keys_user_created", "user_id", "created_at"),  # owner lookups and listings (0011)
)

sessions = Table(
    "sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.user_id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("permissions", String(100), nullable=False, default=""),
    Column("api_key", String(64), nullable=True),
    Column("client_ip", String(64), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("last_seen_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("key_serial", Integer, nullable=True),  # the key's secret serial that made a key session
    # Owner lookups and listings, in index order to the tie-break (0011; token_hash since 0014).
    Index("ix_sessions_user_created", "user_id", "created_at", "token_hash"),
    Index("ix_sessions_api_key", "api_key"),
)

audit_events = Table(
    "audit_events",
    metadata,
    Column("event_id", Integer, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime, nullable=False),
    Column("action", String(48), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("reason", String(200), nullable=True),
    Column("actor_user_id", Integer, nullable=True),
    Column("actor", String(16), nullable=True),  # "operator" (the CLI) or "system"; a user is in actor_user_id
    Column("subject_user_id", Integer, nullable=True),
    Column("api_key", String(64), nullable=True),
    Column("client_ip", String(64), nullable=True),
    Column("detail", Text, nullable=True),
    Index("ix_audit_events_at", "at"),
    Index("ix_audit_events_action", "action"),
)

changes = Table(
    "changes",
    metadata,
    # One row per change that other processes must apply to their caches, written in the change's own
    # transaction (see store.changes).
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("ident", String(200), nullable=False),
    Index("ix_changes_at", "at"),
)

used_nonces = Table(
    "used_nonces",
    metadata,
    Column("api_key", String(64), primary_key=True),
    Column("nonce", String(128), primary_key=True),
    Column("expires_at", UTCDateTime, nullable=False),
    Index("ix_used_nonces_expires_at", "expires_at"),
    Index("ix_used_nonces_key_expiry", "api_key", "expires_at", "nonce"),  # a random-style key forgets its oldest
)
# An increasing-style key forgets its smallest nonces (by length, then text): migration 0010.
Index("ix_used_nonces_key_order", used_nonces.c.api_key, func.length(used_nonces.c.nonce), used_nonces.c.nonce,
      used_nonces.c.expires_at)

# Signature v2 nonces (migration 0013), apart from ``used_nonces``: a ``window`` key forgets its
# remembered nonces in an order (smallest, or oldest, first) that would take v2 nonces with them
# (each expiring within seconds, so first of all by age), and a v2 request could then be replayed
# within its window. Kept only for that window; SQLite: a table without rowid, two B-trees a row.
signature_nonces = Table(
    "signature_nonces",
    metadata,
    Column("api_key", String(64), primary_key=True),
    Column("nonce", String(128), primary_key=True),
    Column("expires_at", UTCDateTime, nullable=False),
    Index("ix_signature_nonces_expires_at", "expires_at"),
    sqlite_with_rowid=False,
)

# Which process decides a ``window`` key's claims in memory, until when, and up to which nonce
# (store/window_leases.py). ``holder`` '' is a shared mark: until ``until`` nobody takes the lease.
nonce_leases = Table(
    "nonce_leases",
    metadata,
    Column("api_key", String(64), primary_key=True),
    Column("holder", String(32), nullable=False),
    Column("until", Float, nullable=False),  # Unix time, seconds
    Column("ceiling", String(20), nullable=True),  # sortable(): the highest nonce the holder may accept
    Column("contended", Boolean, nullable=False, default=False, server_default=false()),
    Index("ix_nonce_leases_holder", "holder"),
)

trust_marks = Table(
    "trust_marks",
    metadata,
    Column("mark", String(120), primary_key=True),  # "known:<username>:<network>": signed in from there before
    Column("expires_at", UTCDateTime, nullable=False),
    Index("ix_trust_marks_expires_at", "expires_at"),
)

key_usage = Table(
    "key_usage",
    metadata,
    # Requests (accepted) and refusals of one key in one UTC hour (``hour``: the hour's start), summed
    # over every process; rows older than 8 days are purged, and a key's rows go with the key.
    Column("api_key", String(64), primary_key=True),
    Column("hour", UTCDateTime, primary_key=True),
    Column("requests", Integer, nullable=False, default=0, server_default="0"),
    Column("refusals", Integer, nullable=False, default=0, server_default="0"),
    Index("ix_key_usage_hour", "hour"),
)

throttle_counters = Table(
    "throttle_counters",
    metadata,
    Column("scope", String(120), primary_key=True),
    Column("failures", Integer, nullable=False),
    Column("window_ends_at", UTCDateTime, nullable=False),
    Column("blocked_until", UTCDateTime, nullable=True),
)
