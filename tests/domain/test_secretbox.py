"""AES-256-GCM sealing of secrets at rest."""

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keygate.domain.secretbox import SecretBox, SecretBoxError

MASTER = os.urandom(32)
OTHER = os.urandom(32)


def test_round_trip() -> None:
    box = SecretBox(MASTER)
    sealed = box.seal("the secret", "apikey:abc")
    assert box.open(sealed, "apikey:abc") == "the secret"
    assert b"the secret" not in sealed


@given(st.text(max_size=200), st.text(max_size=50))
def test_round_trip_any_text(plain: str, context: str) -> None:
    plain = plain.encode("utf-8", "replace").decode("utf-8")
    context = context.encode("utf-8", "replace").decode("utf-8")
    box = SecretBox(MASTER)
    assert box.open(box.seal(plain, context), context) == plain


def test_each_seal_differs() -> None:
    box = SecretBox(MASTER)
    assert box.seal("x", "c") != box.seal("x", "c")


def test_wrong_context_fails() -> None:
    box = SecretBox(MASTER)
    sealed = box.seal("the secret", "apikey:abc")
    with pytest.raises(SecretBoxError):
        box.open(sealed, "apikey:abd")


@pytest.mark.parametrize("position", [0, 1, 5, 17, -1])
def test_tampering_fails(position: int) -> None:
    box = SecretBox(MASTER)
    sealed = bytearray(box.seal("the secret", "ctx"))
    sealed[position] ^= 0x01
    with pytest.raises(SecretBoxError):
        box.open(bytes(sealed), "ctx")


def test_truncated_fails() -> None:
    box = SecretBox(MASTER)
    sealed = box.seal("the secret", "ctx")
    for cut in (0, 10, len(sealed) - 1):
        with pytest.raises(SecretBoxError):
            box.open(sealed[:cut], "ctx")


def test_other_master_key_fails() -> None:
    sealed = SecretBox(MASTER).seal("the secret", "ctx")
    with pytest.raises(SecretBoxError):
        SecretBox(OTHER).open(sealed, "ctx")


def test_previous_keys_open_old_values_and_new_values_use_the_current_key() -> None:
    old_sealed = SecretBox(OTHER).seal("old secret", "ctx")
    rotated = SecretBox(MASTER, previous=[OTHER])
    assert rotated.open(old_sealed, "ctx") == "old secret"
    assert not rotated.sealed_with_current(old_sealed)
    new_sealed = rotated.seal("new secret", "ctx")
    assert rotated.sealed_with_current(new_sealed)
    assert SecretBox(MASTER).open(new_sealed, "ctx") == "new secret"


def test_master_key_must_be_32_bytes() -> None:
    for size in (0, 16, 31, 33):
        with pytest.raises(ValueError):
            SecretBox(os.urandom(size))
