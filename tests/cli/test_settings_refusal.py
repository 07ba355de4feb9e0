"""A bad KEYGATE_* variable stops every way of starting keygate with one line, before anything is served."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cli_support import clean_env, keygate

from support import free_port

TYPO = "error: KEYGATE_BIND_SESSION_IP='ture' is refused: it accepts true or false (also 1/0, yes/no, on/off, any case)"

COMMANDS = [
    ["serve"],
    ["init"],
    ["user", "list"],
    ["user", "create", "alice"],
    ["key", "list", "--user", "alice"],
    ["audit"],
    ["rotate-master-key"],
]


def only_line(result: subprocess.CompletedProcess[str]) -> str:
    output = (result.stdout + result.stderr).strip()
    assert "Traceback" not in output, output
    assert len(output.splitlines()) == 1, output
    return output


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_every_command_stops_on_a_misspelt_boolean(tmp_path: Path, command: list[str]) -> None:
    env = clean_env(KEYGATE_DATA_DIR=str(tmp_path / "var"), KEYGATE_BIND_SESSION_IP="ture",
                    KEYGATE_PASSWORD="a-password-1234", KEYGATE_API_SECRET="secret", KEYGATE_PORT=str(free_port()))
    result = keygate(*command, env=env)
    assert result.returncode == 2
    assert only_line(result) == TYPO
    assert not (tmp_path / "var").exists(), "nothing was set up"


def test_the_readme_shows_the_line_as_printed() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert f"\n{TYPO}\n" in readme


@pytest.mark.parametrize(("variable", "value", "fragment"), [
    ("KEYGATE_CACHE_TTL_SECONDS", "2s", "KEYGATE_CACHE_TTL_SECONDS='2s' is refused: it accepts a number of seconds"),
    ("KEYGATE_TRUSTED_PROXIES", "10.0.0.0/33", "KEYGATE_TRUSTED_PROXIES='10.0.0.0/33' is refused ('10.0.0.0/33' is not an IP address"),
    ("KEYGATE_PORT", "-1", "KEYGATE_PORT='-1' is refused: it accepts a whole number from 1 to 65535"),
    ("KEYGATE_BIND_SESION_IP", "false", "KEYGATE_BIND_SESION_IP is not a keygate setting (did you mean KEYGATE_BIND_SESSION_IP?)"),
])
def test_serve_refuses_a_bad_value_in_one_line(tmp_path: Path, variable: str, value: str, fragment: str) -> None:
    result = keygate("serve", env=clean_env(KEYGATE_DATA_DIR=str(tmp_path / "var"), **{variable: value}))
    assert result.returncode == 2
    assert only_line(result).startswith(f"error: {fragment}")


def test_serve_names_the_option_that_was_refused(tmp_path: Path) -> None:
    result = keygate("serve", "--port", "70000", env=clean_env(KEYGATE_DATA_DIR=str(tmp_path / "var")))
    assert result.returncode == 2
    assert only_line(result) == "error: --port=70000 is refused: it accepts a whole number from 1 to 65535"


def test_sign_is_a_client_tool_that_reads_no_server_setting(tmp_path: Path) -> None:
    """``keygate sign`` runs from the SDK alone (no server settings model is even installed there), so
    a server setting, however wrong, neither stops it nor changes its signature."""
    args = ("sign", "--api-key", "k", "--user-id", "1", "--nonce", "1")
    env = clean_env(KEYGATE_ALICE_SECRET="secret")
    good = keygate(*args, "--secret-env", "KEYGATE_ALICE_SECRET", env=env)
    odd = keygate(*args, "--secret-env", "KEYGATE_ALICE_SECRET", env={**env, "KEYGATE_BIND_SESSION_IP": "ture"})
    assert good.returncode == odd.returncode == 0 and good.stdout == odd.stdout


def uvicorn(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "uvicorn", "keygate.api.asgi:app", "--port", str(free_port()), *args],
                          env=env, capture_output=True, text=True, timeout=60)


def test_uvicorn_stops_on_a_bad_value_in_one_line(tmp_path: Path) -> None:
    result = uvicorn(env=clean_env(KEYGATE_DATA_DIR=str(tmp_path), KEYGATE_BIND_SESSION_IP="ture"))
    assert result.returncode == 3, "uvicorn's start-up failure status"
    assert only_line(result) == TYPO


def test_uvicorn_with_workers_stops_instead_of_restarting_them(tmp_path: Path) -> None:
    result = uvicorn("--workers", "2", env=clean_env(KEYGATE_DATA_DIR=str(tmp_path), KEYGATE_BIND_SESSION_IP="ture"))
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert 1 <= len(lines) <= 2 and set(lines) == {TYPO}, output  # each worker says it once, then uvicorn stops
    assert "failed to start, stopping the parent process" in output


def test_uvicorn_refuses_the_tls_variables_it_would_ignore(tmp_path: Path) -> None:
    result = uvicorn(env=clean_env(KEYGATE_DATA_DIR=str(tmp_path), KEYGATE_TLS_CERT_FILE=str(tmp_path / "c.pem"),
                                   KEYGATE_TLS_KEY_FILE=str(tmp_path / "k.pem")))
    assert result.returncode == 3
    line = only_line(result)
    assert "read by `keygate serve` only" in line and "--ssl-certfile" in line
