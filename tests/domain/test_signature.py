"""The APEX request signature: the protocol's test vector and properties of the check."""

import hashlib
import hmac

from hypothesis import given
from hypothesis import strategies as st

from keygate.domain.signature import SigningKey, compute_signature, is_well_formed, signature_matches, signing_message

SECRET = "4b3e7c0a9f1d2e8b6a5c4d3e2f1a0b9c"
NONCE = "2277045681"
USER_ID = 42
API_KEY = "8d4f1a2b3c5e6f708192a3b4c5d6e7f8"
EXPECTED = "d49473077df88f71cbae6e0e59c560542afd01bc9feb2520dcf24fd33c1209fa"

printable = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40)
hex64 = st.text(alphabet="0123456789abcdefABCDEF", min_size=64, max_size=64)


def test_protocol_test_vector() -> None:
    assert compute_signature(SECRET, NONCE, USER_ID, API_KEY) == EXPECTED
    assert compute_signature(SECRET, NONCE, "42", API_KEY) == EXPECTED


def test_message_is_the_three_strings_concatenated() -> None:
    assert signing_message(NONCE, USER_ID, API_KEY) == b"2277045681428d4f1a2b3c5e6f708192a3b4c5d6e7f8"


def test_vector_matches_in_either_hex_case() -> None:
    assert signature_matches(SECRET, NONCE, USER_ID, API_KEY, EXPECTED)
    assert signature_matches(SECRET, NONCE, "42", API_KEY, EXPECTED.upper())
    mixed = "".join(c.upper() if i % 2 else c for i, c in enumerate(EXPECTED))
    assert signature_matches(SECRET, NONCE, USER_ID, API_KEY, mixed)


def test_vector_refused_when_any_part_differs() -> None:
    assert not signature_matches(SECRET, NONCE, 43, API_KEY, EXPECTED)
    assert not signature_matches(SECRET, "2277045682", USER_ID, API_KEY, EXPECTED)
    assert not signature_matches(SECRET, NONCE, USER_ID, API_KEY[:-1] + "9", EXPECTED)
    assert not signature_matches(SECRET[:-1] + "d", NONCE, USER_ID, API_KEY, EXPECTED)
    assert not signature_matches(SECRET, NONCE, USER_ID, API_KEY, EXPECTED[:-1] + "b")
    assert not signature_matches(SECRET, NONCE, USER_ID, API_KEY, EXPECTED[:-2])
    assert not signature_matches(SECRET, NONCE, USER_ID, API_KEY, "")


def test_well_formed_means_64_hex_digits() -> None:
    assert is_well_formed(EXPECTED)
    assert is_well_formed(EXPECTED.upper())
    assert not is_well_formed(EXPECTED[:-1])
    assert not is_well_formed(EXPECTED + "0")
    assert not is_well_formed("g" * 64)
    assert not is_well_formed(EXPECTED + "\n")


@given(secret=printable, nonce=printable, user_id=st.integers(1, 2**63 - 1), api_key=printable)
def test_signature_is_lowercase_hmac_sha256(secret: str, nonce: str, user_id: int, api_key: str) -> None:
    sig = compute_signature(secret, nonce, user_id, api_key)
    expected = hmac.new(secret.encode(), f"{nonce}{user_id}{api_key}".encode(), hashlib.sha256).hexdigest()
    assert sig == expected
    assert is_well_formed(sig) and sig == sig.lower()
    assert signature_matches(secret, nonce, str(user_id), api_key, sig.upper())


@given(secret=printable, nonce=printable, user_id=st.integers(1, 10**12), api_key=printable, other=hex64)
def test_other_signatures_do_not_match(secret: str, nonce: str, user_id: int, api_key: str, other: str) -> None:
    sig = compute_signature(secret, nonce, user_id, api_key)
    assert signature_matches(secret, nonce, user_id, api_key, other) == (other.lower() == sig)


@given(secret=printable, nonce=printable, api_key=printable, junk=st.text(max_size=100))
def test_malformed_signatures_never_raise(secret: str, nonce: str, api_key: str, junk: str) -> None:
    if junk.lower() != compute_signature(secret, nonce, 7, api_key):
        assert signature_matches(secret, nonce, 7, api_key, junk) is False


def test_a_prepared_key_signs_as_the_recipe_says_every_time() -> None:
    prepared = SigningKey(SECRET)
    for _ in range(3):  # the prepared state is copied, never consumed
        assert prepared.sign(NONCE, USER_ID, API_KEY).hex() == EXPECTED
        assert prepared.matches(NONCE, USER_ID, API_KEY, EXPECTED.upper())
    assert not prepared.matches("2277045682", USER_ID, API_KEY, EXPECTED)
    assert not prepared.matches(NONCE, USER_ID, API_KEY, "zz" * 32)
