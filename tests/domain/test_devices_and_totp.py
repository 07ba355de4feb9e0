"""Device tokens and TOTP time steps."""

from __future__ import annotations

import pyotp

from keygate.domain.devices import issue_device_token, read_device_token
from keygate.domain.totp import matching_step

KEY = b"k" * 32


def test_a_device_token_reads_back_and_resists_tampering():
    token = issue_device_token(KEY, 42)
    device = read_device_token(KEY, token)
    assert device is not None and device.user_id == 42
    v, uid, dev, mac = token.split(".")
    assert read_device_token(KEY, f"{v}.43.{dev}.{mac}") is None, "another user's id"
    assert read_device_token(b"x" * 32, token) is None, "another server key"
    for junk in (None, "", "v1", "v1.a.b.c", "x" * 500, 7):
        assert read_device_token(KEY, junk) is None


def test_a_code_matches_its_own_step_within_one_step_of_now():
    secret = pyotp.random_base32()
    now = 1_800_000_000.0
    step = int(now // 30)
    totp = pyotp.TOTP(secret)
    for offset in (-1, 0, 1):
        assert matching_step(secret, totp.at((step + offset) * 30), now) == step + offset
    assert matching_step(secret, totp.at((step - 2) * 30), now) is None
    assert matching_step(secret, "12345", now) is None and matching_step(secret, None, now) is None
