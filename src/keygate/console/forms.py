"""Reading the key form: permission checkboxes and the IP allowlist, with errors per field."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone

from starlette.datastructures import FormData

from keygate.domain.errors import InvalidRequest
from keygate.domain.iprules import IpAllowlist
from keygate.domain.key_material import KeyType, parse_key_type, parse_public_key
from keygate.domain.keys import parse_expiry
from keygate.domain.permissions import Permission, format_permissions, parse_permissions
from keygate.domain.replay import ReplayMode, parse_replay_mode

_SPLIT = re.compile(r"[\s,;]+")


@dataclass
class KeyForm:
    """What the user typed, kept to re-show the form, plus the parsed values once valid."""

    label: str = ""
    permissions: list[str] = field(default_factory=list)
    allowlist_text: str = ""
    replay_mode: str = ""  # "": the operator's default (new keys) or unchanged (edits)
    expires_text: str = ""  # HTML datetime-local value, read as UTC; "": never
    signatures: str = ""  # "apex" (APEX and v2) or "v2" (Signature v2 only); "": the operator's default / unchanged
    errors: dict[str, str] = field(default_factory=dict)
    parsed_permissions: frozenset[Permission] = frozenset()
    parsed_allowlist: IpAllowlist = IpAllowlist()
    parsed_replay_mode: ReplayMode | None = None
    parsed_expiry: datetime | None = None
    parsed_requires_v2: bool | None = None
    key_type: str = "hmac"  # new keys only: "hmac" or "ed25519"
    public_key_text: str = ""  # ed25519: the public key pasted, or made in the browser (console/static/keypair.js)
    parsed_key_type: KeyType = KeyType.HMAC
    parsed_public_key: bytes | None = None

    @classmethod
    def blank(cls) -> "KeyForm":
        return cls()

    @classmethod
    def of_key(cls, label: str, permissions: frozenset[Permission], allowlist: IpAllowlist,
               replay_mode: ReplayMode | None = None, expires_at: datetime | None = None,
               requires_v2: bool | None = None) -> "KeyForm":
        return cls(label=label, permissions=format_permissions(permissions), allowlist_text="\n".join(allowlist.as_strings()),
                   replay_mode=replay_mode.value if replay_mode else "",
                   signatures="" if requires_v2 is None else ("v2" if requires_v2 else "apex"),
                   expires_text=expires_at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M") if expires_at else "")

    @classmethod
    def read(cls, form: FormData) -> "KeyForm":
        label = form.get("label")
        allow = form.get("ip_allowlist")
        mode = form.get("replay_mode")
        expires = form.get("expires_at")
        signatures = form.get("signatures")
        kf = cls(
            label=label.strip() if isinstance(label, str) else "",
            permissions=[p for p in form.getlist("permissions") if isinstance(p, str)],
            allowlist_text=allow if isinstance(allow, str) else "",
            replay_mode=mode.strip() if isinstance(mode, str) else "",
            expires_text=expires.strip() if isinstance(expires, str) else "",
            signatures=signatures.strip() if isinstance(signatures, str) else "",
        )
        if kf.signatures in ("apex", "v2"):
            kf.parsed_requires_v2 = kf.signatures == "v2"
        elif kf.signatures:
            kf.errors["signatures"] = 'Signatures must be "apex" (APEX and Signature v2) or "v2" (Signature v2 only)'
        try:
            kf.parsed_replay_mode = parse_replay_mode(kf.replay_mode) if kf.replay_mode else None
        except InvalidRequest as exc:
            kf.errors["replay_mode"] = exc.message
        try:
            kf.parsed_expiry = parse_expiry(kf.expires_text)
        except InvalidRequest:
            kf.errors["expires_at"] = "Expiry must be a date and time, e.g. 2027-01-31 00:00 (UTC), or empty for never"
        try:
            kf.parsed_permissions = parse_permissions(kf.permissions)
        except InvalidRequest as exc:
            kf.errors["permissions"] = exc.message
        kf._read_allowlist()
        return kf

    def read_key_type(self, form: FormData) -> "KeyForm":
        """The create form's key type and, for ed25519, its public key (never a private key)."""
        kind, public = form.get("key_type"), form.get("public_key")
        self.key_type = kind.strip() if isinstance(kind, str) else "hmac"
        text = public.strip() if isinstance(public, str) else ""
        try:
            self.parsed_key_type = parse_key_type(self.key_type)
        except InvalidRequest as exc:
            self.errors["key_type"] = exc.message
            return self
        if self.parsed_key_type is KeyType.ED25519:
            try:
                self.parsed_public_key = parse_public_key(text)
            except InvalidRequest as exc:
                self.errors["public_key"] = (exc.message if text else
                                             "Paste your Ed25519 public key, or make a key pair in this browser")
                return self
            if "PRIVATE" not in text:
                self.public_key_text = text  # shown again on an error; a pasted private key never is
        return self

    def _read_allowlist(self) -> None:
        """Check every entry, so that all bad entries are named at once, not only the first."""
        entries = [e for e in _SPLIT.split(self.allowlist_text) if e]
        bad = []
        for entry in entries:
            try:
                IpAllowlist.parse([entry])
            except InvalidRequest:
                bad.append(entry if len(entry) <= 60 else entry[:60] + "...")
        if bad:
            names = ", ".join(f"\u201c{b}\u201d" for b in bad)
            noun = "is not a valid IP address or CIDR range" if len(bad) == 1 else "are not valid IP addresses or CIDR ranges"
            self.errors["ip_allowlist"] = (
                f"{names} {noun}. Use addresses like 203.0.113.7 or 2001:db8::1 and ranges like 10.0.0.0/8."
            )
            return
        try:
            self.parsed_allowlist = IpAllowlist.parse(entries)
        except InvalidRequest as exc:
            self.errors["ip_allowlist"] = exc.message

    @property
    def valid(self) -> bool:
        return not self.errors

    def refused(self, message: str) -> None:
        """Put a refusal from the service next to the field it is about, or on the form."""
        lower = message.lower()
        if lower.startswith("expiresat"):
            self.errors["expires_at"] = message.replace("ExpiresAt", "Expiry", 1)
        elif lower.startswith("label"):
            self.errors["label"] = message
        elif "allowlist" in lower:
            self.errors["ip_allowlist"] = message
        elif lower.startswith("publickey"):
            self.errors["public_key"] = message
        elif "permission" in lower:
            self.errors["permissions"] = message
        else:
            self.errors["form"] = message

    @property
    def field_errors(self) -> bool:
        return any(name != "form" for name in self.errors)
