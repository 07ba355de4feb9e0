"""Running the ``keygate`` CLI as a real subprocess, the way an operator does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from support import TEST_VECTOR, need, pg_available, settings_env, unique_name  # noqa: F401  (re-exported)
from support import _psql as create_pg_database  # noqa: F401


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
