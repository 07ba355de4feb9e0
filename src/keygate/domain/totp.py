"""TOTP codes (RFC 6238: SHA-1, 30-second steps, 6 digits) and the time step a code belongs to.

A code is accepted for the current step or the one before or after (clock drift). The step it
matched is what the service claims once per user, so a code, or an older one, never works twice.
"""

from __future__ import annotations

import time

import pyotp

STEP_SECONDS = 30


def normalize_code(code: object) -> str | None:
    if isinstance(code, int) and not isinstance(code, bool):
        code = f"{code:06d}"
    if not isinstance(code, str):
        return None
    code = code.strip().replace(" ", "")
    return code if len(code) == 6 and code.isdigit() else None


def matching_step(secret: str, code: object, now: float | None = None) -> int | None:
    """The time step (``unix time // 30``) whose code ``code`` is, within one step of now; else ``None``."""
    code = normalize_code(code)
    if code is None:
        return None
    totp = pyotp.TOTP(secret)
    current = int((time.time() if now is None else now) // STEP_SECONDS)
    found = None
    for step in (current - 1, current, current + 1):
        if pyotp.utils.strings_equal(totp.at(step * STEP_SECONDS), code):
            found = step  # the latest matching step wins
    return found
