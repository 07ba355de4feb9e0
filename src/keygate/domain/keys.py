"""API keys: how they are generated and what a stored key is."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from keygate.domain.iprules import IpAllowlist
from keygate.domain.key_material import KeyType, fingerprint
from keygate.domain.permissions import Permission, format_permissions
from keygate.domain.replay import ReplayMode

API_KEY_HEX = 32  # 128 bits, the shape APEX clients know
SECRET_HEX = 64  # 256 bits: more than APEX's 32 hex digits, same alphabet
MAX_LABEL = 100
_API_KEY_SHAPE = re.compile(r"[0-9a-f]{32}")


def new_api_key() -> str:
    return secrets.token_hex(API_KEY_HEX // 2)


def new_secret() -> str:
    return secrets.token_hex(SECRET_HEX // 2)


def new_nonce() -> str:
    """A 10-digit number like the one the seed shows, for clients that reuse it."""
    return str(secrets.randbelow(9_000_000_000) + 1_000_000_000)


def looks_like_api_key(value: str) -> bool:
    return _API_KEY_SHAPE.fullmatch(value) is not None


def clean_label(label: object) -> str:
    from keygate.domain.errors import InvalidRequest

    if label is None:
        return ""
    if not isinstance(label, str):
        raise InvalidRequest("Label must be a string")
    label = label.strip()
    if len(label) > MAX_LABEL:
        raise InvalidRequest(f"Label is longer than {MAX_LABEL} characters")
    if any(ord(c) < 32 for c in label):
        raise InvalidRequest("Label must not contain control characters")
    return label


def parse_expiry(value: object) -> datetime | None:
    """``ExpiresAt``: an ISO 8601 date-time (UTC unless it names an offset), or null for no expiry."""
    from datetime import timezone

    from keygate.domain.errors import InvalidRequest

    if value is None or value == "":
        return None
    if isinstance(value, str) and len(value) <= 40:
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            parsed = None
        if parsed is not None:
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    raise InvalidRequest("ExpiresAt must be an ISO 8601 date-time such as 2027-01-31T00:00:00Z, or null")


@dataclass(frozen=True)
class ApiKey:
    """A stored key. ``sealed_secret`` is the AES-GCM ciphertext; the plain secret never lives here.

    An ``ed25519`` key has no secret (``sealed_secret`` is None) but ``public_key``, the raw 32 bytes
    of its Ed25519 public key (nothing that can sign); ``previous_public_key`` is its rotation grace.
    """

    api_key: str
    user_id: int
    label: str
    permissions: frozenset[Permission]
    ip_allowlist: IpAllowlist
    sealed_secret: bytes | None
    nonce: str
    created_at: datetime
    updated_at: datetime
    last_used_at: datetime | None = None
    replay_mode: ReplayMode = ReplayMode.COMPATIBLE
    expires_at: datetime | None = None
    sealed_previous_secret: bytes | None = None  # still accepted until previous_secret_expires_at (rotation grace)
    previous_secret_expires_at: datetime | None = None
    secret_serial: int = 1  # one more at every rotation; a key session carries the serial that made it
    replay_floor: int | None = None  # see domain.replay.floor_applies
    replay_floor_until: datetime | None = None
    last_used_ip: str | None = None  # the client address of the last use (as written with last_used_at)
    key_type: KeyType = KeyType.HMAC
    public_key: bytes | None = None  # ed25519 keys: the raw 32-byte public key
    previous_public_key: bytes | None = None  # ed25519 keys: accepted until previous_secret_expires_at
    requires_v2: bool = False  # Signature v2 (RFC 9421) only: APEX signatures of this key are refused

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def idle_expired(self, now: datetime, max_idle_days: int) -> bool:
        """Operator option: a key with no allowlist that went unused for ``max_idle_days`` stops working."""
        if max_idle_days <= 0 or not self.ip_allowlist.allows_any:
            return False
        last = self.last_used_at or self.created_at
        return (now - last).total_seconds() >= max_idle_days * 86400

    def previous_secret_usable(self, now: datetime) -> bool:
        """Whether the previous secret (hmac) or public key (ed25519) still signs: a rotation grace."""
        return (
            (self.sealed_previous_secret is not None or self.previous_public_key is not None)
            and self.previous_secret_expires_at is not None
            and now < self.previous_secret_expires_at
        )

    def accepts_session_serial(self, serial: int | None, now: datetime) -> bool:
        """Whether a session made with the secret of ``serial`` may still be used.

        The current secret's sessions may; the previous secret's only while its rotation grace lasts;
        any older one never (the secret that made it no longer signs anything).
        """
        if serial is None or serial == self.secret_serial:
            return True  # None: a session from before secret serials, which rotation ended anyway
        return serial == self.secret_serial - 1 and self.previous_secret_usable(now)

    def public_view(self) -> dict[str, object]:
        """What listings show: everything but the secret."""
        return {
            "APIKey": self.api_key,
            "UserId": self.user_id,
            "Label": self.label,
            "Permissions": format_permissions(self.permissions),
            "IpAllowlist": self.ip_allowlist.as_strings(),
            "Nonce": self.nonce,
            "CreatedAt": self.created_at.isoformat(),
            "UpdatedAt": self.updated_at.isoformat(),
            "LastUsedAt": self.last_used_at.isoformat() if self.last_used_at else None,
            "ReplayMode": self.replay_mode.value,
            "RequiresSignatureV2": self.requires_v2,
            "ExpiresAt": self.expires_at.isoformat() if self.expires_at else None,
            "PreviousSecretValidUntil": (
                self.previous_secret_expires_at.isoformat()
                if (self.sealed_previous_secret or self.previous_public_key) and self.previous_secret_expires_at else None
            ),
            "KeyType": self.key_type.value,
            "PublicKeyFingerprint": fingerprint(self.public_key) if self.public_key is not None else None,
        }
