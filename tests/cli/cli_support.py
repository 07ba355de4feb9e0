"""Running the ``keygate`` CLI as a real subprocess, the way an operator does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TEST_VECTOR = {
    "secret": "4b3e7c0a9f1d2e8b6a5c4d3e2f1a0b9c",
    "nonce": "2277045681",
    "user_id": "42",
    "api_key": "8d4f1a2b3c5e6f708192a3b4c5d6e7f8",
    "signature": "d49473077df88f71cbae6e0e59c560542afd01bc9feb2520dcf24fd33c1209fa",
}


def clean_env(**values: str) -> dict[str, str]:
    """The caller's environment without any KEYGATE_* setting, plus ``values``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYGATE_")}
    env.update(values)
    return env


def keygate(*args: str, env: dict[str, str], input: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m keygate ARGS``; stdin is empty (not a terminal) unless ``input`` is given."""
    return subprocess.run(
        [sys.executable, "-m", "keygate", *args],
        env=env,
        input=input if input is not None else "",
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def assert_clean_refusal(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Exit code 2, a message naming the problem, and no Python traceback anywhere."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output, output
    for fragment in fragments:
        assert fragment.lower() in output.lower(), output
