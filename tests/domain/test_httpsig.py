"""Signature v2's pure parts: RFC 8941 fields, the RFC 9421 signature base and the RFC's own test vectors.

The vectors are RFC 9421 appendix B.2.5 (hmac-sha256) and B.2.6 (ed25519), on the test request of
appendix B.2 with the keys of B.1.4 (test-key-ed25519) and B.1.5 (test-shared-secret), copied from
the RFC text. They pass through keygate's verifier and through the signer the SDK uses.
"""

from __future__ import annotations

import base64
import hashlib
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keygate.domain.digest import content_digest, digest_matches
from keygate.domain.httpsig import (
    InnerList,
    Item,
    RequestParts,
    SfvError,
    SignatureError,
    Token,
    missing_for_keygate,
    parse_dictionary,
    read_signature,
    serialize_dictionary,
    sign_request,
    signature_base,
    verify,
)

# RFC 9421 B.2: the test request.
#   POST /foo?param=Value&Pet=dog HTTP/1.1
#   Host: example.com
#   Date: Tue, 20 Apr 2021 02:07:55 GMT
#   Content-Type: application/json
#   Content-Digest: sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:
#   Content-Length: 18
#
#   {"hello": "world"}
TEST_REQUEST = RequestParts(
    "POST", "/foo", "param=Value&Pet=dog", "example.com",
    {"host": ["example.com"], "date": ["Tue, 20 Apr 2021 02:07:55 GMT"], "content-type": ["application/json"],
     "content-digest": ["sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:"],
     "content-length": ["18"]},
    b'{"hello": "world"}', True,
)
# B.1.5 test-shared-secret; B.1.4 test-key-ed25519 (the JWK's d and x, base64url).
SHARED_SECRET = base64.b64decode("uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ==")
ED25519_PRIVATE = base64.urlsafe_b64decode("n4Ni-HpISpVObnQMW0wOhCKROaIKqKtW_2ZYb2p9KcU=")
ED25519_PUBLIC = base64.urlsafe_b64decode("JrQLj5P_89iXES9-vFgrIy29clF9CC_oPPsw3c5D0bs=")

B25_INPUT = 'sig-b25=("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret"'
B25_SIGNATURE = "sig-b25=:pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=:"
B25_BASE = (
    '"date": Tue, 20 Apr 2021 02:07:55 GMT\n'
    '"@authority": example.com\n'
    '"content-type": application/json\n'
    '"@signature-params": ("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret"'
)
B26_INPUT = ('sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473'
             ';keyid="test-key-ed25519"')
B26_SIGNATURE = "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:"
B26_BASE = (
    '"date": Tue, 20 Apr 2021 02:07:55 GMT\n'
    '"@method": POST\n'
    '"@path": /foo\n'
    '"@authority": example.com\n'
    '"content-type": application/json\n'
    '"content-length": 18\n'
    '"@signature-params": ("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473'
    ';keyid="test-key-ed25519"'
)


@pytest.mark.parametrize("signature_input, signature, expected_base, alg, key", [
    (B25_INPUT, B25_SIGNATURE, B25_BASE, "hmac-sha256", SHARED_SECRET),
    (B26_INPUT, B26_SIGNATURE, B26_BASE, "ed25519", ED25519_PUBLIC),
], ids=["B.2.5-hmac-sha256", "B.2.6-ed25519"])
def test_the_rfc_vectors_pass_through_the_verifier(signature_input, signature, expected_base, alg, key):
    signed = read_signature(signature_input, signature)
    base = signature_base(signed.covered, TEST_REQUEST)
    assert base.decode() == expected_base
    assert verify(alg, key, base, signed.signature)
    assert not verify(alg, key, base.replace(b"POST", b"PUT").replace(b"example.com", b"example.org"), signed.signature)
    assert not verify("ed25519" if alg == "hmac-sha256" else "hmac-sha256", key, base, signed.signature)


@pytest.mark.parametrize("label, components, alg, key, expected_input, expected_signature", [
    ("sig-b25", ("date", "@authority", "content-type"), "hmac-sha256", SHARED_SECRET, B25_INPUT, B25_SIGNATURE),
    ("sig-b26", ("date", "@method", "@path", "@authority", "content-type", "content-length"), "ed25519", ED25519_PRIVATE,
     B26_INPUT, B26_SIGNATURE),
], ids=["B.2.5-hmac-sha256", "B.2.6-ed25519"])
def test_the_sdk_signer_makes_the_rfc_signatures(label, components, alg, key, expected_input, expected_signature):
    headers = sign_request(TEST_REQUEST, keyid=expected_input.split('keyid="')[1].rstrip('"'), key=key, alg=alg,
                           created=1618884473, nonce=None, label=label, components=components, include_alg=False)
    assert headers["Signature-Input"] == expected_input
    assert headers["Signature"] == expected_signature  # Ed25519 is deterministic: the same bytes


def test_keygate_profile_requires_method_path_query_digest_and_its_parameters():
    parts = RequestParts("POST", "/AP/GetUserInfo", "", "h", {}, b"{}", True)
    headers = sign_request(parts, keyid="k", key=b"s", alg="hmac-sha256", created=1, nonce="n")
    assert headers["Signature-Input"] == ('kg=("@method" "@path" "@query" "content-digest");created=1;nonce="n";keyid="k";'
                                          'alg="hmac-sha256"')
    signed_parts = RequestParts("POST", "/AP/GetUserInfo", "", "h", {"content-digest": [headers["Content-Digest"]]}, b"{}", True)
    assert missing_for_keygate(read_signature(headers["Signature-Input"], headers["Signature"]), signed_parts) == []
    short = read_signature('kg=("@method");created=1', "kg=:AAAA:")
    assert missing_for_keygate(short, signed_parts) == ["@path", "@query", "content-digest", ";nonce", ";keyid"]
    bodyless = RequestParts("GET", "/x", "", "h", {}, None, False)
    no_digest = read_signature('kg=("@method" "@path" "@query");created=1;nonce="a";keyid="k"', "kg=:AAAA:")
    assert missing_for_keygate(no_digest, bodyless) == [], "a body-less request covers method, path and query"


def test_derived_components_follow_the_rfc():
    parts = RequestParts("GET", "", "", "Example.COM:8443", {"x-a": [" one ", "two\t"]})
    covered = InnerList((Item("@method"), Item("@path"), Item("@query"), Item("@authority"), Item("x-a")), (("created", 5),))
    assert signature_base(covered, parts).decode().split("\n")[:5] == [
        '"@method": GET', '"@path": /', '"@query": ?', '"@authority": example.com:8443', '"x-a": one, two']


@pytest.mark.parametrize("covered, why", [
    ('("@method" "@method")', "twice"),
    ('("@target-uri")', "not supported"),
    ('("x-missing")', "does not have"),
    ('("content-type";sf)', "parameters"),
    ('("@signature-params")', "may not be covered"),
    ("(method)", "strings"),
])
def test_unusable_components_are_refused(covered, why):
    signed = read_signature(f"kg={covered};created=1", "kg=:AAAA:")
    with pytest.raises(SignatureError, match=why):
        signature_base(signed.covered, TEST_REQUEST)


@pytest.mark.parametrize("field", [
    "a=1,", "A=1", "a=(1 2", 'a="x', 'a="\\x"', "a=:not base64!:", "a=?2", "a=1.2345", "a=1234567890123456",
    "a=(1,2)", "a=1 b=2", "a=\"é\"",
])
def test_malformed_dictionaries_are_refused(field):
    with pytest.raises(SfvError):
        parse_dictionary(field)


def test_content_digest_sha256():
    body = b'{"hello": "world"}'
    field = content_digest(body)
    assert field == "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"
    assert digest_matches(field, body)
    assert digest_matches("sha-512=:AAAA:, " + field, body), "other algorithms beside sha-256 are ignored"
    assert not digest_matches(field, body + b" ")
    assert not digest_matches(TEST_REQUEST.field("content-digest") or "", body), "sha-512 alone does not satisfy keygate"
    assert not digest_matches("sha-256=:AAAA:", body) and not digest_matches("garbage(", body)


# ----- round trips ------------------------------------------------------------------------------

_keys = st.from_regex(r"[a-z*][a-z0-9_\-.*]{0,8}", fullmatch=True)
_bare = st.one_of(
    st.integers(-999_999_999_999_999, 999_999_999_999_999),
    st.decimals(min_value=Decimal("-999999999999.999"), max_value=Decimal("999999999999.999"), places=3,
                allow_nan=False, allow_infinity=False).map(lambda d: d.normalize() if d != 0 else Decimal("0")),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20),
    st.from_regex(r"[A-Za-z*][A-Za-z0-9!#$%&'*+\-.^_`|~:/]{0,10}", fullmatch=True).map(Token),
    st.binary(max_size=40),
    st.booleans(),
)
_params = st.dictionaries(_keys, _bare, max_size=3).map(lambda d: tuple(d.items()))
_item = st.builds(Item, _bare, _params)
_member = st.one_of(_item, st.builds(InnerList, st.lists(_item, max_size=4).map(tuple), _params))


@given(st.dictionaries(_keys, _member, min_size=1, max_size=4))
def test_dictionaries_round_trip(members):
    text = serialize_dictionary(members)
    parsed = parse_dictionary(text)
    assert serialize_dictionary(parsed) == text
    assert list(parsed) == list(members)
    for key, member in members.items():
        assert _normal(parsed[key]) == _normal(member)


def _normal(member):  # decimals compare by value; a token and a string of the same text differ
    def bare(v):
        return (type(v).__name__ if not isinstance(v, bool) else "bool", v if not isinstance(v, Decimal) else float(v))

    def item(i):
        return bare(i.value), tuple((k, bare(v)) for k, v in i.params)

    if isinstance(member, InnerList):
        return tuple(item(i) for i in member.items), tuple((k, bare(v)) for k, v in member.params)
    return item(member)


@given(st.text(max_size=60))
def test_the_parser_never_fails_but_with_its_own_error(text):
    try:
        parse_dictionary(text)
    except SfvError:
        pass


def test_the_readme_worked_example_is_what_the_signer_makes():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Signature v2 (RFC 9421)\n", 1)[1].split("\n## ", 1)[0]
    base_block, headers_block = [b for b in section.split("```text\n")[1:3]]
    parts = RequestParts("POST", "/AP/GetUserInfo", "UserId=42", None, {}, b"{}", True)
    headers = sign_request(parts, keyid="8d4f1a2b3c5e6f708192a3b4c5d6e7f8", key=b"4b3e7c0a9f1d2e8b6a5c4d3e2f1a0b9c",
                           alg="hmac-sha256", created=1700000000, nonce="7f3a9c0e5b2d4f61")
    assert headers_block.split("```")[0].strip().splitlines() == [f"{k}: {v}" for k, v in headers.items()]
    signed = read_signature(headers["Signature-Input"], headers["Signature"])
    with_digest = RequestParts("POST", "/AP/GetUserInfo", "UserId=42", None, {"content-digest": [headers["Content-Digest"]]},
                               b"{}", True)
    assert base_block.split("```")[0].strip() == signature_base(signed.covered, with_digest).decode()


def test_the_deployment_guide_digest_recipe_agrees_with_keygate():
    import re
    from pathlib import Path

    guide = (Path(__file__).resolve().parents[2] / "docs" / "deployment.md").read_text()
    section = guide.split("### Who checks the body\n", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    names: dict[str, object] = {}
    exec(compile(code, "deployment.md", "exec"), names)  # noqa: S102 - the guide's own recipe
    check = names["body_matches_digest"]
    body = b'{"side": "buy"}'
    for field, sent in ((content_digest(body), body), ("sha-512=:AAAA:, " + content_digest(body), body),
                        (content_digest(body), body + b" "), (None, body), ("sha-256=:!!:", body), (None, b""),
                        (content_digest(b""), b"")):
        expected = digest_matches(field, sent) if field is not None else not sent
        assert check(sent, field) is expected, (field, sent)


def test_the_sdk_signs_v2_with_an_ed25519_private_key():
    from keygate.sdk.client import v2_headers

    headers = v2_headers("POST", "https://api.example/AP/SendOrder?x=1", b"{}", "k" * 32, None, private_key=ED25519_PRIVATE,
                         created=1700000000, nonce="abc")
    assert 'alg="ed25519"' in headers["Signature-Input"]
    signed = read_signature(headers["Signature-Input"], headers["Signature"])
    parts = RequestParts("POST", "/AP/SendOrder", "x=1", None, {"content-digest": [headers["Content-Digest"]]}, b"{}", True)
    assert verify("ed25519", ED25519_PUBLIC, signature_base(signed.covered, parts), signed.signature)


# ----- the canonical fast path of read_signature ---------------------------------------------------
_SF_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, blacklist_characters='"\\'), max_size=20)
_PARAM_VALUE = st.one_of(st.integers(min_value=0, max_value=10**15 - 1), _SF_TEXT)


@given(
    components=st.lists(st.one_of(st.sampled_from(["@method", "@path", "@query", "content-digest"]), _SF_TEXT), max_size=5),
    params=st.dictionaries(st.sampled_from(["created", "nonce", "keyid", "alg", "expires", "tag"]), _PARAM_VALUE, max_size=6),
    raw=st.binary(min_size=1, max_size=80),
    label=st.sampled_from(["sig1", "kg", "a*b"]),
)
def test_the_fast_reader_agrees_with_the_general_parser(components, params, raw, label) -> None:  # type: ignore[no-untyped-def]
    """What every signer writes (canonical RFC 8941) is read by a fast path; it must give exactly what
    the general parser gives: the same components, parameters and bytes, and the same serialization
    in the signature base."""
    from keygate.domain import httpsig

    inner = httpsig.InnerList(tuple(httpsig.Item(c) for c in components), tuple(params.items()))
    signature_input = f"{label}={httpsig.serialize_inner_list(inner)}"
    signature = f"{label}={httpsig.serialize_bare(raw)}"
    fast = httpsig._read_canonical(signature_input, signature)
    assert fast is not None, signature_input
    slow_inputs = httpsig.parse_dictionary(signature_input)
    slow_sigs = httpsig.parse_dictionary(signature)
    assert fast.label == label
    assert fast.covered == slow_inputs[label]
    assert fast.signature == slow_sigs[label].value == raw  # type: ignore[union-attr]
    assert fast.covered.serialized == httpsig.serialize_inner_list(slow_inputs[label])  # type: ignore[arg-type]


@pytest.mark.parametrize("signature_input", [
    'kg=("@method" "@path");created=1;created=2',  # a repeated parameter: the general parser decides
    'kg=("@method"  "@path");created=1',  # two spaces
    ' kg=("@method");created=1',  # leading space
    'kg=("@method");created=01',  # a leading zero
    'kg=("@me\\"thod");created=1',  # an escape
    'kg=("@method");flag',  # a boolean parameter
    'kg=("@method");created=1, other=("@path")',  # two members
])
def test_anything_but_the_canonical_form_takes_the_general_parser(signature_input: str) -> None:
    from keygate.domain import httpsig

    assert httpsig._read_canonical(signature_input, "kg=:AAAA:") is None
