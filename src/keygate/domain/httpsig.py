"""HTTP Message Signatures (RFC 9421) for keygate's Signature v2. Pure: no I/O, no clock, no randomness.

Three parts:

* a parser and serializer of RFC 8941 structured fields (dictionaries, inner lists, items with
  parameters; integers, decimals, strings, tokens, byte sequences ``:base64:``, booleans), enough
  for ``Signature-Input``, ``Signature`` and ``Content-Digest``;
* the signature base (RFC 9421 section 2.5) of a request for the derived components ``@method``,
  ``@path``, ``@query``, ``@authority`` and for header fields (lower-case names, values trimmed,
  repeated lines joined with ``", "``), ending with ``@signature-params``;
* the algorithms ``hmac-sha256`` (standard library) and ``ed25519`` (``cryptography``, imported only
  when an Ed25519 signature is made or checked, so that the SDK's HMAC signing needs nothing more).

keygate's own profile (what a v2 signature must cover) is :func:`missing_for_keygate`; the grant
rules live in ``keygate.service.http_signatures``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

# ----- RFC 8941 structured fields ---------------------------------------------------------------


class SfvError(ValueError):
    """The field is not a valid structured field (the message says where)."""


class Token(str):
    """An RFC 8941 token (``sha-256``, ``*foo``): a string that serializes without quotes."""

    __slots__ = ()


BareItem = int | Decimal | str | Token | bytes | bool
Params = tuple[tuple[str, BareItem], ...]


@dataclass(frozen=True)
class Item:
    value: BareItem
    params: Params = ()

    def param(self, name: str) -> BareItem | None:
        return _param(self.params, name)


@dataclass(frozen=True)
class InnerList:
    items: tuple[Item, ...]
    params: Params = ()
    # Its serialization, when it was read from a field already written in canonical form (the fast
    # path of ``read_signature``): the same text ``serialize_inner_list`` would give.
    serialized: str | None = field(default=None, compare=False, repr=False)

    def param(self, name: str) -> BareItem | None:
        return _param(self.params, name)


Member = Item | InnerList


def _param(params: Params, name: str) -> BareItem | None:
    for key, value in params:
        if key == name:
            return value
    return None


_KEY_FIRST = frozenset("abcdefghijklmnopqrstuvwxyz*")
_KEY_REST = _KEY_FIRST | frozenset("0123456789_-.")
_ALPHA = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_DIGITS = frozenset("0123456789")
_TCHAR = _ALPHA | _DIGITS | frozenset("!#$%&'*+-.^_`|~")
_TOKEN_REST = _TCHAR | frozenset(":/")
_BASE64 = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
MAX_FIELD = 8192  # longer fields are refused before parsing


class _Reader:
    __slots__ = ("s", "i")

    def __init__(self, s: str) -> None:
        self.s = s
        self.i = 0

    def peek(self) -> str:
        return self.s[self.i:self.i + 1]

    def take(self) -> str:
        c = self.s[self.i:self.i + 1]
        self.i += 1
        return c

    def skip(self, chars: str) -> None:
        s, i = self.s, self.i
        while s[i:i + 1] in chars and i < len(s):
            i += 1
        self.i = i

    def done(self) -> bool:
        return self.i >= len(self.s)

    def fail(self, what: str) -> SfvError:
        return SfvError(f"{what} at character {self.i + 1}")


_KEY_RE = re.compile(r"[a-z*][a-z0-9_\-.*]*")
_STRING_RE = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"')
_TOKEN_RE = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")
_BYTES_RE = re.compile(r":([A-Za-z0-9+/=]*):")
_NUMBER_RE = re.compile(r"(-?)([0-9]+)(?:\.([0-9]*))?")
_UNESCAPE = re.compile(r"\\(.)")
_PRINTABLE = re.compile(r"[\x20-\x7e]*")


def _key(r: _Reader) -> str:
    m = _KEY_RE.match(r.s, r.i)
    if m is None:
        raise r.fail("expected a key (lower-case letter or '*')")
    r.i = m.end()
    return m.group()


def _number(r: _Reader) -> int | Decimal:
    m = _NUMBER_RE.match(r.s, r.i)
    if m is None:
        raise r.fail("expected a digit")
    sign, whole, fraction = m.groups()
    if fraction is None:
        if len(whole) > 15:
            raise r.fail("an integer has at most 15 digits")
        r.i = m.end()
        return -int(whole) if sign else int(whole)
    if len(whole) > 12:
        raise r.fail("a decimal has at most 12 integer digits")
    if not fraction:
        raise r.fail("a decimal needs a digit after '.'")
    if len(fraction) > 3:
        raise r.fail("a decimal has at most 3 fraction digits")
    r.i = m.end()
    value = Decimal(f"{whole}.{fraction}")
    return -value if sign else value


def _string(r: _Reader) -> str:
    m = _STRING_RE.match(r.s, r.i)
    if m is None:
        raise r.fail("a string is printable ASCII between quotes, escaping only '\"' and '\\'")
    r.i = m.end()
    text = m.group(1)
    return _UNESCAPE.sub(r"\1", text) if "\\" in text else text


def _token(r: _Reader) -> Token:
    m = _TOKEN_RE.match(r.s, r.i)
    assert m is not None  # the caller saw a letter or '*'
    r.i = m.end()
    return Token(m.group())


def _bytes(r: _Reader) -> bytes:
    m = _BYTES_RE.match(r.s, r.i)
    if m is None:
        raise r.fail("a byte sequence is base64 between ':' and ':'")
    r.i = m.end()
    try:
        return base64.b64decode(m.group(1), validate=True)
    except (binascii.Error, ValueError):
        raise r.fail("a byte sequence is not valid base64") from None


def _bare(r: _Reader) -> BareItem:
    c = r.peek()
    if c == "-" or (c in _DIGITS and c):
        return _number(r)
    if c == '"':
        return _string(r)
    if c == ":":
        return _bytes(r)
    if c == "?":
        v = r.s[r.i + 1:r.i + 2]
        if v not in ("0", "1") or v == "":
            raise r.fail("a boolean is ?0 or ?1")
        r.i += 2
        return v == "1"
    if c and (c in _ALPHA or c == "*"):
        return _token(r)
    raise r.fail("expected an item")


def _params(r: _Reader) -> Params:
    s = r.s
    if s[r.i:r.i + 1] != ";":
        return ()
    out: dict[str, BareItem] = {}
    while s[r.i:r.i + 1] == ";":
        r.i += 1
        if s[r.i:r.i + 1] == " ":
            r.skip(" ")
        key = _key(r)
        value: BareItem = True
        if s[r.i:r.i + 1] == "=":
            r.i += 1
            value = _bare(r)
        out.pop(key, None)  # a repeated key: the last value wins, at the last place
        out[key] = value
    return tuple(out.items())


def _inner_list(r: _Reader) -> InnerList:
    r.take()  # "("
    items: list[Item] = []
    while not r.done():
        r.skip(" ")
        if r.peek() == ")":
            r.take()
            return InnerList(tuple(items), _params(r))
        items.append(Item(_bare(r), _params(r)))
        if r.peek() not in (" ", ")") or r.done():
            raise r.fail("inner list items are separated by spaces")
    raise r.fail("unterminated inner list")


def _member(r: _Reader) -> Member:
    if r.peek() == "(":
        return _inner_list(r)
    return Item(_bare(r), _params(r))


def parse_dictionary(field: str) -> dict[str, Member]:
    """An RFC 8941 dictionary (section 4.2.2), in order; a repeated key keeps its last value."""
    if len(field) > MAX_FIELD:
        raise SfvError(f"the field is longer than {MAX_FIELD} characters")
    r = _Reader(field)
    r.skip(" ")
    out: dict[str, Member] = {}
    while not r.done():
        key = _key(r)
        member: Member
        if r.peek() == "=":
            r.take()
            member = _member(r)
        else:
            member = Item(True, _params(r))
        out.pop(key, None)
        out[key] = member
        r.skip(" \t")
        if r.done():
            return out
        if r.take() != ",":
            r.i -= 1
            raise r.fail("expected ',' between dictionary members")
        r.skip(" \t")
        if r.done():
            raise r.fail("a trailing ','")
    return out


def serialize_bare(value: BareItem) -> str:
    if isinstance(value, bool):
        return "?1" if value else "?0"
    if isinstance(value, int):
        if abs(value) > 999_999_999_999_999:
            raise SfvError("an integer has at most 15 digits")
        return str(value)
    if isinstance(value, Decimal):
        rounded = value.quantize(Decimal("0.001"))
        text = format(rounded, "f").rstrip("0")
        return text + "0" if text.endswith(".") else text
    if isinstance(value, bytes):
        return ":" + base64.b64encode(value).decode() + ":"
    if isinstance(value, Token):
        if _TOKEN_RE.fullmatch(value) is None:
            raise SfvError(f"not a token: {value!r}")
        return str(value)
    if isinstance(value, str):
        if _PRINTABLE.fullmatch(value) is None:
            raise SfvError("a string holds printable ASCII only")
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise SfvError(f"not a structured field item: {type(value).__name__}")


def _check_key(key: str) -> str:
    if _KEY_RE.fullmatch(key) is None:
        raise SfvError(f"not a key: {key!r}")
    return key


def serialize_params(params: Params) -> str:
    return "".join(f";{_check_key(k)}" if v is True else f";{_check_key(k)}={serialize_bare(v)}" for k, v in params)


def serialize_item(item: Item) -> str:
    return serialize_bare(item.value) + serialize_params(item.params)


def serialize_inner_list(inner: InnerList) -> str:
    return "(" + " ".join(serialize_item(i) for i in inner.items) + ")" + serialize_params(inner.params)


def serialize_member(member: Member) -> str:
    return serialize_inner_list(member) if isinstance(member, InnerList) else serialize_item(member)


def serialize_dictionary(members: Mapping[str, Member]) -> str:
    parts = []
    for key, member in members.items():
        if isinstance(member, Item) and member.value is True:
            parts.append(_check_key(key) + serialize_params(member.params))
        else:
            parts.append(f"{_check_key(key)}={serialize_member(member)}")
    return ", ".join(parts)


# ----- the signature base -------------------------------------------------------------------------


class SignatureError(ValueError):
    """The request's signature fields cannot be used; the message says why (it reveals no secret)."""


@dataclass(frozen=True)
class RequestParts:
    """What a signature may cover of a request, as it reached the verifier.

    ``path`` and ``query`` are as sent (percent-encoded; ``query`` without its ``?``, ``""`` when
    there is none); ``headers`` maps lower-case names to their field lines in order; ``body`` is
    ``None`` when the body did not reach the verifier (forward auth) and ``has_body`` says whether
    the request announced one.
    """

    method: str
    path: str
    query: str = ""
    authority: str | None = None
    headers: Mapping[str, Sequence[str]] = ()  # type: ignore[assignment]
    body: bytes | None = None
    has_body: bool = False

    def field(self, name: str) -> str | None:
        lines = self.headers.get(name) if self.headers else None
        if not lines:
            return None
        return ", ".join(line.strip(" \t") for line in lines)


DERIVED = ("@method", "@path", "@query", "@authority")


def component_value(name: str, parts: RequestParts) -> str:
    """The value of one covered component (RFC 9421 sections 2.1 and 2.2)."""
    if name == "@method":
        return parts.method
    if name == "@path":
        return parts.path or "/"
    if name == "@query":
        return "?" + parts.query
    if name == "@authority":
        if parts.authority is None:
            raise SignatureError("the request has no authority (Host) to cover")
        return parts.authority.lower()
    if name.startswith("@"):
        raise SignatureError(f"the derived component {name} is not supported (use {', '.join(DERIVED)})")
    if name != name.lower():
        raise SignatureError(f"component names are lower-case: {name!r}")
    value = parts.field(name)
    if value is None:
        raise SignatureError(f"the signature covers the header field {name!r}, which the request does not have")
    return value


def signature_base(covered: InnerList, parts: RequestParts) -> bytes:
    """The signature base (RFC 9421 section 2.5): one ``"name": value`` line per covered component, in
    order, then ``"@signature-params"`` with the serialized inner list (components and parameters)."""
    lines: list[str] = []
    seen: set[str] = set()
    for item in covered.items:
        if not isinstance(item.value, str) or isinstance(item.value, Token):
            raise SignatureError("covered components are strings, e.g. (\"@method\" \"@path\")")
        name = item.value
        if item.params:
            raise SignatureError(f"component parameters ({name!r};{item.params[0][0]}) are not supported")
        if name == "@signature-params":
            raise SignatureError("@signature-params may not be covered")
        if name in seen:
            raise SignatureError(f"the component {name!r} is covered twice")
        seen.add(name)
        value = component_value(name, parts)
        if "\n" in value or "\r" in value:
            raise SignatureError(f"the component {name!r} holds a line break")
        lines.append(f'"{name}": {value}')
    lines.append(f'"@signature-params": {covered.serialized or serialize_inner_list(covered)}')
    try:
        return "\n".join(lines).encode("ascii")
    except UnicodeEncodeError:
        raise SignatureError("covered values must be ASCII") from None


# ----- reading Signature-Input and Signature ------------------------------------------------------


@dataclass(frozen=True)
class SignedRequest:
    """One signature of a request: its label, what it covers, its parameters and its bytes."""

    label: str
    covered: InnerList
    signature: bytes

    @property
    def components(self) -> tuple[str, ...]:
        return tuple(str(i.value) for i in self.covered.items)

    def _int(self, name: str) -> int | None:
        value = self.covered.param(name)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise SignatureError(f"the parameter {name} must be an integer")
        return value

    def _str(self, name: str) -> str | None:
        value = self.covered.param(name)
        if value is None:
            return None
        if not isinstance(value, str) or isinstance(value, Token):
            raise SignatureError(f"the parameter {name} must be a string")
        return value

    @property
    def created(self) -> int | None:
        return self._int("created")

    @property
    def expires(self) -> int | None:
        return self._int("expires")

    @property
    def nonce(self) -> str | None:
        return self._str("nonce")

    @property
    def keyid(self) -> str | None:
        return self._str("keyid")

    @property
    def alg(self) -> str | None:
        return self._str("alg")


MAX_SIGNATURE_BYTES = 512


_S = r'"[\x20\x21\x23-\x5b\x5d-\x7e]*"'  # an sf-string without escapes
_K = r"[a-z*][a-z0-9_\-.*]*"  # an sf key
_FAST_INPUT = re.compile(rf"({_K})=\(((?:{_S}(?: {_S})*)?)\)((?:;{_K}=(?:0|[1-9][0-9]{{0,14}}|{_S}))*)")
_FAST_PARAM = re.compile(rf';({_K})=(?:(0|[1-9][0-9]{{0,14}})|"([^"]*)")')
_FAST_STRING = re.compile(r'"([^"]*)"')
_FAST_SIGNATURE = re.compile(rf"({_K})=:([A-Za-z0-9+/]+={{0,2}}):")


def _read_canonical(signature_input: str, signature: str) -> SignedRequest | None:
    """The fast path of ``read_signature``: one signature, written exactly as RFC 8941 serializes it
    (what every signer writes: strings without escapes, integers without leading zeros, single spaces,
    each parameter once). Such a field needs no general parser, and its text is its serialization.
    Anything else (several members, escapes, tokens, booleans, whitespace) returns None: the general
    parser decides, with its precise errors. A property test holds the two to the same result."""
    found = _FAST_INPUT.fullmatch(signature_input)
    sig = _FAST_SIGNATURE.fullmatch(signature)
    if found is None or sig is None or sig.group(1) != found.group(1):
        return None
    inner = found.group(2)
    items = tuple(Item(c) for c in _FAST_STRING.findall(inner))
    params = tuple((k, int(n) if n else text) for k, n, text in _FAST_PARAM.findall(found.group(3)))
    if len({k for k, _ in params}) != len(params):
        return None
    try:
        raw = base64.b64decode(sig.group(2), validate=True)
    except (binascii.Error, ValueError):
        return None
    if not 0 < len(raw) <= MAX_SIGNATURE_BYTES:
        return None
    covered = InnerList(items, params, serialized=signature_input[len(found.group(1)) + 1:])
    return SignedRequest(found.group(1), covered, raw)


def read_signature(signature_input: str, signature: str, label: str | None = None) -> SignedRequest:
    """The signature named ``label`` (by default the first one of ``Signature-Input``)."""
    if label is None and len(signature_input) <= MAX_FIELD and len(signature) <= MAX_FIELD:
        fast = _read_canonical(signature_input, signature)
        if fast is not None:
            return fast
    try:
        inputs = parse_dictionary(signature_input)
    except SfvError as exc:
        raise SignatureError(f"Signature-Input is not a structured field dictionary: {exc}") from None
    try:
        signatures = parse_dictionary(signature)
    except SfvError as exc:
        raise SignatureError(f"Signature is not a structured field dictionary: {exc}") from None
    if not inputs:
        raise SignatureError("Signature-Input names no signature")
    name = label if label is not None else next(iter(inputs))
    covered = inputs.get(name)
    if not isinstance(covered, InnerList):
        raise SignatureError(f"Signature-Input's {name} must be an inner list, e.g. (\"@method\" \"@path\");created=...")
    sig = signatures.get(name)
    if not isinstance(sig, Item) or not isinstance(sig.value, bytes):
        raise SignatureError(f"Signature has no byte sequence :base64: labelled {name}")
    if not 0 < len(sig.value) <= MAX_SIGNATURE_BYTES:
        raise SignatureError("the signature's length is not that of any supported algorithm")
    return SignedRequest(name, covered, sig.value)


# ----- keygate's profile --------------------------------------------------------------------------

ALGORITHMS = ("hmac-sha256", "ed25519")
REQUIRED_COMPONENTS = ("@method", "@path", "@query")
REQUIRED_PARAMS = ("created", "nonce", "keyid")
MAX_NONCE = 64
_NONCE = re.compile(r"[\x21-\x7e]{1,64}")
LABEL = "kg"


def missing_for_keygate(signed: SignedRequest, parts: RequestParts) -> list[str]:
    """What keygate's v2 profile requires and the signature lacks: ``@method``, ``@path``, ``@query``
    always; ``content-digest`` when the request has a body or a ``Content-Digest`` field; the
    parameters ``created``, ``nonce`` and ``keyid``."""
    covered = set(signed.components)
    needed = list(REQUIRED_COMPONENTS)
    if parts.has_body or parts.field("content-digest") is not None:
        needed.append("content-digest")
    missing = [c for c in needed if c not in covered]
    missing += [f";{p}" for p in REQUIRED_PARAMS if signed.covered.param(p) is None]
    return missing


def well_formed_nonce(nonce: str) -> bool:
    return _NONCE.fullmatch(nonce) is not None


# ----- algorithms ---------------------------------------------------------------------------------


def sign_hmac_sha256(key: bytes, base: bytes) -> bytes:
    return hmac.digest(key, base, hashlib.sha256)


def verify_hmac_sha256(key: bytes, base: bytes, signature: bytes) -> bool:
    return hmac.compare_digest(sign_hmac_sha256(key, base), signature)


def sign_ed25519(private_key: bytes, base: bytes) -> bytes:
    """Sign with a raw 32-byte Ed25519 private key (needs ``cryptography``)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(private_key).sign(base)


def verify_ed25519(public_key: bytes, base: bytes, signature: bytes) -> bool:
    """Check with a raw 32-byte Ed25519 public key; a malformed key or signature simply does not verify."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if len(public_key) != 32 or len(signature) != 64:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, base)
    except (InvalidSignature, ValueError):
        return False
    return True


def verify(alg: str, key: bytes, base: bytes, signature: bytes) -> bool:
    """``hmac-sha256`` with the shared key, or ``ed25519`` with the raw public key."""
    if alg == "hmac-sha256":
        return verify_hmac_sha256(key, base, signature)
    if alg == "ed25519":
        return verify_ed25519(key, base, signature)
    return False


# ----- signing (the SDK and the CLI) --------------------------------------------------------------


def covered_for(parts: RequestParts, extra: Sequence[str] = ()) -> tuple[str, ...]:
    """The components keygate's v2 profile covers for this request (``content-digest`` if it has a body)."""
    names = list(REQUIRED_COMPONENTS)
    if parts.has_body or parts.body:
        names.append("content-digest")
    return tuple(names) + tuple(extra)


def signature_params(components: Sequence[str], *, created: int, nonce: str | None, keyid: str,
                     alg: str | None = None, expires: int | None = None) -> InnerList:
    params: list[tuple[str, BareItem]] = [("created", created)]
    if expires is not None:
        params.append(("expires", expires))
    if nonce is not None:
        params.append(("nonce", nonce))
    params.append(("keyid", keyid))
    if alg is not None:
        params.append(("alg", alg))
    return InnerList(tuple(Item(c) for c in components), tuple(params))


def sign_request(parts: RequestParts, *, keyid: str, key: bytes, alg: str, created: int, nonce: str | None,
                 label: str = LABEL, components: Sequence[str] | None = None, include_alg: bool = True) -> dict[str, str]:
    """The headers that sign ``parts``: ``Content-Digest`` (when it has a body), ``Signature-Input`` and
    ``Signature``. ``key`` is the HMAC key (keygate: the API secret's UTF-8 bytes) or the raw Ed25519
    private key. ``nonce=None`` leaves the parameter out (keygate refuses that; RFC examples have none)."""
    from keygate.domain.digest import content_digest

    if alg not in ALGORITHMS:
        raise SignatureError(f"alg must be one of {', '.join(ALGORITHMS)}")
    headers: dict[str, str] = {}
    fields = dict(parts.headers) if parts.headers else {}
    if parts.body:
        headers["Content-Digest"] = content_digest(parts.body)
        fields["content-digest"] = [headers["Content-Digest"]]
    signed_parts = RequestParts(parts.method, parts.path, parts.query, parts.authority, fields, parts.body,
                                parts.has_body or bool(parts.body))
    covered = signature_params(components or covered_for(signed_parts), created=created, nonce=nonce, keyid=keyid,
                               alg=alg if include_alg else None)
    base = signature_base(covered, signed_parts)
    signature = sign_hmac_sha256(key, base) if alg == "hmac-sha256" else sign_ed25519(key, base)
    headers["Signature-Input"] = f"{label}={serialize_inner_list(covered)}"
    headers["Signature"] = f"{label}={serialize_bare(signature)}"
    return headers


def split_target(target: str) -> tuple[str, str]:
    """``/path?query`` into its path and query (without ``?``)."""
    path, _, query = target.partition("?")
    return path or "/", query
