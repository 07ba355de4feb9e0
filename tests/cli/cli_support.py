"""Running the ``keygate`` CLI as a real subprocess, the way an operator does."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType


def _root_conftest() -> ModuleType:
    """tests/conftest.py itself: several folders have a conftest.py, so ``import conftest`` depends on
    collection order."""
    path = Path(__file__).resolve().parents[1] / "conftest.py"
    for name in ("conftest", "keygate_tests_root_conftest"):
        loaded = sys.modules.get(name)
        if loaded is not None and Path(getattr(loaded, "__file__", "") or "").resolve() == path:
            return loaded
    spec = importlib.util.spec_from_file_location("keygate_tests_root_conftest", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


_root = _root_conftest()
settings_env = _root.settings_env
unique_name = _root.unique_name
need = _root.need
pg_available = _root.pg_available
create_pg_database = _root._psql

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
