"""Signature v2: requests signed per RFC 9421 (HTTP Message Signatures) with RFC 9530 Content-Digest.

A v2 request carries ``Signature-Input`` and ``Signature`` (label ``kg`` by the SDK; keygate reads
the first signature of ``Signature-Input``), and is accepted if and only if (docs/security.md,
"Signature v2"):

1. the signature covers ``@method``, ``@path``, ``@query``, and ``content-digest`` whenever the
   request has a body or a ``Content-Digest`` field, with the parameters ``created``, ``nonce`` and
   ``keyid`` (the APIKey); ``alg``, if given, is ``hmac-sha256`` or ``ed25519`` and the key's own;
2. ``Content-Digest`` (``sha-256``) matches the body, when the body reaches keygate;
3. the key exists, its user exists, and the signature verifies with the key (HMAC: the API secret's
   UTF-8 bytes, or the previous secret while a rotation grace lasts; Ed25519: the public key);
4. the grant rules of APEX signatures hold: allowlist, expiry, idle expiry, user not locked;
5. ``created`` lies within ``window`` seconds before the server's clock (or at most ``FUTURE_SKEW``
   seconds after it), ``expires`` (if given) has not passed, and the nonce is single-use per key:
   it is claimed in the shared state for ``window + FUTURE_SKEW`` seconds, after which ``created``
   alone refuses the request. Replay protection needs no increasing nonces and its memory is bounded
   by the window: at most (requests per second) x (window + skew) nonces per key.

Refusals follow the APEX signatures' rules: one public message for anything that does not prove the
secret (counted against the source address, padded to the same time, audited with the cause); a
caller that proved it holds the key is told exactly what is wrong. Shape errors (a missing component,
a malformed field, a digest that does not match the body) are 400s that reveal nothing of any account.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from keygate.domain.digest import digest_matches
from keygate.domain.errors import InvalidRequest
from keygate.domain.httpsig import (
    ALGORITHMS,
    RequestParts,
    SignatureError,
    SignedRequest,
    missing_for_keygate,
    read_signature,
    signature_base,
    well_formed_nonce,
)
from keygate.domain.key_material import KeyType
from keygate.domain.key_material import verify as verify_material
from keygate.domain.keys import ApiKey
from keygate.domain.users import User
from keygate.service.auth import MAX_API_KEY_LENGTH, Authenticator, SessionGrant
from keygate.service.clock import utcnow
from keygate.service.keys import KeyManager
from keygate.service.principal import Principal

FUTURE_SKEW = 2  # seconds ``created`` may lie ahead of the server's clock
NONCE_PREFIX = "v2:"  # v2 nonces are claimed apart from the APEX nonces of the same key

Verify = Callable[[ApiKey, bytes, bytes], bool]
"""``verify(key, signature_base, signature)``: whether ``signature`` is the key's current material's
signature of ``signature_base`` (HMAC keys: HMAC-SHA256 under the API secret; Ed25519 keys: the public key)."""


def key_algorithm(key: ApiKey) -> str:
    """The RFC 9421 ``alg`` of a key: ``ed25519`` for public-key keys, else ``hmac-sha256``."""
    return "ed25519" if key.key_type is KeyType.ED25519 else "hmac-sha256"


def material_verifier(keys: KeyManager) -> Verify:
    """The default ``verify``: the key's material (``domain.key_material``), the same check as APEX's:
    HMAC-SHA256 keyed with the API secret's UTF-8 bytes, or the Ed25519 public key."""

    def verify(key: ApiKey, base: bytes, signature: bytes) -> bool:
        return verify_material(keys.material_of(key), base, signature)

    return verify


class HttpSignatures:
    def __init__(self, auth: Authenticator, keys: KeyManager, window_seconds: int, verify: Verify | None = None) -> None:
        self._auth = auth
        self._keys = keys
        self.window_seconds = window_seconds
        self._check = verify or material_verifier(keys)

    @staticmethod
    def read(parts: RequestParts) -> SignedRequest:
        """The request's signature, checked against keygate's profile; shape errors are ``InvalidRequest``."""
        signature_input, signature = parts.field("signature-input"), parts.field("signature")
        if not signature_input or not signature:
            raise InvalidRequest("Signature v2: send both Signature-Input and Signature (RFC 9421)")
        try:
            signed = read_signature(signature_input, signature)
            missing = missing_for_keygate(signed, parts)
            if missing:
                raise InvalidRequest("Signature v2 must cover @method, @path, @query (and content-digest with a body) "
                                     f"with created, nonce and keyid; missing: {' '.join(missing)}")
            keyid, nonce, alg, created = signed.keyid, signed.nonce, signed.alg, signed.created
            _ = signed.expires  # its type is checked here
        except SignatureError as exc:
            raise InvalidRequest(f"Signature v2: {exc}") from None
        assert keyid is not None and nonce is not None and created is not None
        if not keyid or len(keyid) > MAX_API_KEY_LENGTH or not keyid.isascii() or not keyid.isprintable():
            raise InvalidRequest(f"Signature v2: keyid must be the APIKey (at most {MAX_API_KEY_LENGTH} characters)")
        if not well_formed_nonce(nonce):
            raise InvalidRequest("Signature v2: nonce must be 1 to 64 visible ASCII characters, new for every request")
        if alg is not None and alg not in ALGORITHMS:
            raise InvalidRequest(f"Signature v2: alg must be one of {', '.join(ALGORITHMS)} (or left out)")
        return signed

    async def _verify(self, parts: RequestParts, client_ip: str | None, action: str) -> tuple[User, ApiKey, int]:
        signed = self.read(parts)
        if parts.body is not None and (parts.has_body or parts.field("content-digest") is not None):
            field = parts.field("content-digest")
            if field is None or not digest_matches(field, parts.body):
                raise InvalidRequest("Signature v2: Content-Digest does not match the body (send sha-256=:base64 of "
                                     "SHA-256(body):)")
        try:
            base = signature_base(signed.covered, parts)
        except SignatureError as exc:
            raise InvalidRequest(f"Signature v2: {exc}") from None
        auth = self._auth
        started = time.monotonic()
        auth.require_healthy()
        assert signed.keyid is not None and signed.nonce is not None and signed.created is not None
        key = await self._keys.lookup(signed.keyid.strip())
        user = await auth.user(key.user_id) if key is not None else None
        if key is None:
            raise await auth.refuse_guess(action, "unknown api key", key, user, client_ip, started)
        if user is None:
            raise await auth.refuse_guess(action, "unknown user", key, user, client_ip, started)
        alg = key_algorithm(key)
        if signed.alg is not None and signed.alg != alg:
            raise await auth.refuse_guess(action, "v2 alg is not the key's", key, user, client_ip, started)
        now = utcnow()
        serial = key.secret_serial
        ok = self._check(key, base, signed.signature)
        if not ok:
            previous = self._keys.previous_material_of(key)
            if previous is not None and verify_material(previous, base, signed.signature):
                ok, serial = True, serial - 1
        if not ok:
            raise await auth.refuse_guess(action, "signature mismatch", key, user, client_ip, started)
        # The caller proved it holds the key: refusals may say exactly what is wrong.
        auth.check_holder(action, key, user, client_ip, now)
        clock = int(now.timestamp())
        age = clock - signed.created
        if age > self.window_seconds:
            raise auth.refuse_holder(action, "v2 created outside the window", key, user, client_ip,
                                      f"Signature v2: created is {age} s old; sign each request when it is sent "
                                      f"(within {self.window_seconds} s) and check your clock")
        if -age > FUTURE_SKEW:
            raise auth.refuse_holder(action, "v2 created outside the window", key, user, client_ip,
                                      f"Signature v2: created is {-age} s ahead of the server's clock; check your clock")
        if signed.expires is not None and signed.expires < clock:
            raise auth.refuse_holder(action, "v2 signature expired", key, user, client_ip, "Signature v2: the signature has expired")
        if not await auth.claim_signature_nonce(key.api_key, NONCE_PREFIX + signed.nonce,
                                                       self.window_seconds + FUTURE_SKEW + 1):
            raise auth.refuse_holder(action, "v2 nonce reused (replay?)", key, user, client_ip,
                                      "Signature v2: this nonce was already used with this key; send a new random nonce "
                                      "with every request")
        self._keys.mark_used(key.api_key, client_ip)
        return user, key, serial

    async def principal_for_http_signature(self, parts: RequestParts, client_ip: str | None) -> Principal:
        """A private call signed with Signature v2 (the rules in this module's docstring)."""
        user, key, _ = await self._verify(parts, client_ip, "auth.signed_request")
        return self._auth.tally_signed_request(user, key, client_ip)

    async def authenticate_http_signature(self, parts: RequestParts, client_ip: str | None) -> SessionGrant:
        """``AuthenticateUser`` signed with Signature v2: a key session, as an APEX key sign-in makes."""
        user, key, serial = await self._verify(parts, client_ip, "auth.key")
        return await self._auth.grant_key_session(user, key, client_ip, serial, detail="signature v2")
