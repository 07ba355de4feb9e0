"""Content-Digest (RFC 9530) with ``sha-256``: ``Content-Digest: sha-256=:<base64 of SHA-256(body)>:``.

Pure; the field is an RFC 8941 dictionary, read with :mod:`keygate.domain.httpsig`'s parser. Other
algorithms (``sha-512``) may be listed beside ``sha-256`` and are ignored; a field without ``sha-256``
does not satisfy keygate.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

ALGORITHM = "sha-256"


def content_digest(body: bytes) -> str:
    """The ``Content-Digest`` field value a sender puts on ``body``."""
    return f"{ALGORITHM}=:{base64.b64encode(hashlib.sha256(body).digest()).decode()}:"


def sha256_of(field_value: str) -> bytes | None:
    """The ``sha-256`` digest a ``Content-Digest`` field names, or None if it names none (or is malformed)."""
    from keygate.domain.httpsig import Item, SfvError, parse_dictionary

    try:
        members = parse_dictionary(field_value)
    except SfvError:
        return None
    member = members.get(ALGORITHM)
    if not isinstance(member, Item) or not isinstance(member.value, bytes) or len(member.value) != hashlib.sha256().digest_size:
        return None
    return member.value


def digest_matches(field_value: str, body: bytes) -> bool:
    """Constant-time check that the field's ``sha-256`` member is the digest of ``body``."""
    given = sha256_of(field_value)
    return given is not None and hmac.compare_digest(given, hashlib.sha256(body).digest())
