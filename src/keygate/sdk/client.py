"""A client for any APEX-speaking server, keygate included.

``Client(base_url, user_id, api_key, secret)`` signs in with ``AuthenticateUser`` on first use, sends the
session token as ``aptoken`` on every call, and signs in again by itself once when the server answers
that the session has expired. ``AsyncClient`` is the same on ``httpx.AsyncClient``.

For a keygate ``ed25519`` key, give ``private_key=`` (a PKCS#8 PEM, the 32-byte seed, or the console's
JSON export) instead of the secret: the client then signs with Ed25519. That needs the ``cryptography``
package (``pip install 'keygate[ed25519]'``); HMAC clients never do.

With ``signature="v2"`` every call is signed on its own per RFC 9421 (Signature v2: method, path,
query, ``Content-Digest`` of the body, ``created``, a random single-use ``nonce`` and ``keyid``); no
session is made. ``AuthenticateUser`` is then signed the same way.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import httpx

from keygate.domain.httpsig import RequestParts, sign_request
from keygate.domain.signature import compute_signature

if TYPE_CHECKING:
    from keygate.sdk.ed25519 import Ed25519Signer

SignatureScheme = Literal["apex", "v2"]


def v2_headers(method: str, url: str, body: bytes, api_key: str, secret: str | None, *,
               created: int | None = None, nonce: str | None = None, private_key: bytes | None = None) -> dict[str, str]:
    """The Signature v2 headers of one request (``Content-Digest`` with a body, ``Signature-Input``,
    ``Signature``): HMAC-SHA256 keyed with the secret's UTF-8 bytes, or, with ``private_key`` (the raw
    32 bytes; needs ``cryptography``), Ed25519. ``created`` defaults to now and ``nonce`` to 128 random bits."""
    parts = urlsplit(url)
    request = RequestParts(method.upper(), parts.path or "/", parts.query, parts.netloc, {}, body or None, bool(body))
    if private_key is None and secret is None:
        raise ValueError("give the API secret (HMAC keys) or the Ed25519 private key")
    key, alg = (private_key, "ed25519") if private_key is not None else ((secret or "").encode(), "hmac-sha256")
    return sign_request(request, keyid=api_key, key=key, alg=alg,
                        created=int(time.time()) if created is None else created,
                        nonce=nonce or secrets.token_urlsafe(16))

NOT_AUTHORIZED = 20


class KeygateAPIError(Exception):
    """The server refused a call; ``status``, ``errorcode`` and ``errormsg`` say why."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        self.errormsg = body.get("errormsg") if isinstance(body, dict) else None
        self.errorcode = body.get("errorcode") if isinstance(body, dict) else None
        super().__init__(f"HTTP {status}: {self.errormsg or body!r}")


class _NonceClock:
    """Millisecond timestamps that never repeat or go back, even for calls in the same millisecond.

    A server that checks nonces per key (keygate's ``increasing`` replay mode) accepts every one.
    """

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> str:
        self._last = max(time.time_ns() // 1_000_000, self._last + 1)
        return str(self._last)


class _Base:
    def __init__(self, base_url: str, user_id: int | str, api_key: str, secret: str | None = None, prefix: str = "/AP",
                 private_key: object = None, signature: SignatureScheme = "apex") -> None:
        if (secret is None) == (private_key is None):
            raise ValueError("give either the key's secret (hmac keys) or private_key (ed25519 keys)")
        if signature not in ("apex", "v2"):
            raise ValueError("signature must be 'apex' or 'v2'")
        self.signature = signature
        self.base_url = base_url.rstrip("/")
        self.user_id = str(user_id)
        self.api_key = api_key
        self._secret = secret
        self._signer: Ed25519Signer | None = None
        if private_key is not None:
            from keygate.sdk.ed25519 import Ed25519Signer  # needs cryptography: keygate[ed25519]

            self._signer = Ed25519Signer(private_key)
        self.prefix = prefix
        self.session_token: str | None = None
        self._nonces = _NonceClock()

    def __repr__(self) -> str:  # never show the secret
        return f"{type(self).__name__}({self.base_url!r}, user_id={self.user_id!r}, api_key={self.api_key!r})"

    def signed_headers(self, nonce: str | None = None) -> dict[str, str]:
        """The four APEX signing headers; ``nonce`` defaults to a fresh, increasing millisecond timestamp."""
        nonce = nonce or self._nonces.next()
        return {
            "APIKey": self.api_key,
            "Signature": (self._signer.apex_signature(nonce, self.user_id, self.api_key) if self._signer is not None
                          else compute_signature(self._secret or "", nonce, self.user_id, self.api_key)),
            "UserId": self.user_id,
            "Nonce": nonce,
        }

    def v2_request(self, endpoint: str, payload: dict[str, Any] | None = None) -> tuple[str, bytes, dict[str, str]]:
        """URL, body and headers of a POST to ``endpoint`` signed with Signature v2."""
        url = self._url(endpoint)
        body = json.dumps(payload or {}, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", **v2_headers("POST", url, body, self.api_key, self._secret,
                                                                     private_key=self._signer.raw_private_key() if self._signer else None)}
        return url, body, headers

    def _url(self, endpoint: str) -> str:
        return f"{self.base_url}{self.prefix}/{endpoint}"

    @staticmethod
    def _decode(response: httpx.Response) -> Any:
        try:
            body = response.json()
        except ValueError:
            body = {"errormsg": response.text[:200]}
        # A server with KEYGATE_REFUSAL_STATUS=200 answers refusals with 200 and names their status here.
        named = response.headers.get("x-keygate-status", "")
        status = int(named) if named.isdigit() else response.status_code
        if status >= 400:
            raise KeygateAPIError(status, body)
        if isinstance(body, dict) and (body.get("Authenticated") is False or body.get("result") is False):
            raise KeygateAPIError(status, body)
        return body

    @staticmethod
    def _session_lost(exc: KeygateAPIError) -> bool:
        return exc.status == 401 and exc.errorcode == NOT_AUTHORIZED


class Client(_Base):
    """Synchronous client. Use as a context manager, or call ``close()``."""

    def __init__(self, base_url: str, user_id: int | str, api_key: str, secret: str | None = None, *, timeout: float = 10.0,
                 transport: httpx.BaseTransport | None = None, private_key: object = None,
                 signature: SignatureScheme = "apex") -> None:
        super().__init__(base_url, user_id, api_key, secret, private_key=private_key, signature=signature)
        self._http = httpx.Client(timeout=timeout, transport=transport)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def authenticate(self) -> dict[str, Any]:
        if self.signature == "v2":
            url, content, headers = self.v2_request("AuthenticateUser")
            body = self._decode(self._http.post(url, content=content, headers=headers))
        else:
            body = self._decode(self._http.post(self._url("AuthenticateUser"), headers=self.signed_headers()))
        self.session_token = body["SessionToken"]
        return body  # type: ignore[no-any-return]

    def call(self, endpoint: str, payload: dict[str, Any] | None = None, *, signed: bool = False) -> Any:
        """POST ``payload`` to ``endpoint``; with ``signed``, sign this request instead of using a session
        (with ``signature="v2"``, every call is signed so)."""
        if self.signature == "v2":
            url, content, headers = self.v2_request(endpoint, payload)
            return self._decode(self._http.post(url, content=content, headers=headers))
        if signed:
            return self._decode(self._http.post(self._url(endpoint), json=payload or {}, headers=self.signed_headers()))
        if self.session_token is None:
            self.authenticate()
        try:
            return self._send(endpoint, payload)
        except KeygateAPIError as exc:
            if not self._session_lost(exc):
                raise
            self.authenticate()
            return self._send(endpoint, payload)

    def _send(self, endpoint: str, payload: dict[str, Any] | None) -> Any:
        return self._decode(self._http.post(self._url(endpoint), json=payload or {}, headers={"aptoken": self.session_token or ""}))

    def ping(self) -> Any:
        return self._decode(self._http.get(self._url("Ping")))

    def logout(self) -> Any:
        if self.session_token is None:
            return {"result": True}
        try:
            return self._send("LogOut", None)
        finally:
            self.session_token = None


class AsyncClient(_Base):
    """The asynchronous twin of ``Client``."""

    def __init__(self, base_url: str, user_id: int | str, api_key: str, secret: str | None = None, *, timeout: float = 10.0,
                 transport: httpx.AsyncBaseTransport | None = None, private_key: object = None,
                 signature: SignatureScheme = "apex") -> None:
        super().__init__(base_url, user_id, api_key, secret, private_key=private_key, signature=signature)
        self._http = httpx.AsyncClient(timeout=timeout, transport=transport)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def authenticate(self) -> dict[str, Any]:
        if self.signature == "v2":
            url, content, headers = self.v2_request("AuthenticateUser")
            body = self._decode(await self._http.post(url, content=content, headers=headers))
        else:
            body = self._decode(await self._http.post(self._url("AuthenticateUser"), headers=self.signed_headers()))
        self.session_token = body["SessionToken"]
        return body  # type: ignore[no-any-return]

    async def call(self, endpoint: str, payload: dict[str, Any] | None = None, *, signed: bool = False) -> Any:
        if self.signature == "v2":
            url, content, headers = self.v2_request(endpoint, payload)
            return self._decode(await self._http.post(url, content=content, headers=headers))
        if signed:
            return self._decode(await self._http.post(self._url(endpoint), json=payload or {}, headers=self.signed_headers()))
        if self.session_token is None:
            await self.authenticate()
        try:
            return await self._send(endpoint, payload)
        except KeygateAPIError as exc:
            if not self._session_lost(exc):
                raise
            await self.authenticate()
            return await self._send(endpoint, payload)

    async def _send(self, endpoint: str, payload: dict[str, Any] | None) -> Any:
        return self._decode(await self._http.post(self._url(endpoint), json=payload or {}, headers={"aptoken": self.session_token or ""}))

    async def ping(self) -> Any:
        return self._decode(await self._http.get(self._url("Ping")))

    async def logout(self) -> Any:
        if self.session_token is None:
            return {"result": True}
        try:
            return await self._send("LogOut", None)
        finally:
            self.session_token = None
