"""The settings model: every KEYGATE_* variable checked, one clear line per refusal, defaults written once."""

from __future__ import annotations

import base64
from pathlib import Path

import pydantic
import pytest

from keygate.config import BOOLEAN_WORDS, InvalidSetting, Settings
from keygate.domain.throttle import ThrottlePolicy


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """An environment without any KEYGATE_* variable; returns a setter."""
    import os

    for name in list(os.environ):
        if name.upper().startswith("KEYGATE_"):
            monkeypatch.delenv(name)

    def put(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)

    return put


def refusal() -> list[str]:
    with pytest.raises(InvalidSetting) as caught:
        Settings.from_env()
    return caught.value.lines


BAD_VALUES = [
    ("KEYGATE_BIND_SESSION_IP", "ture", "true or false"),
    ("KEYGATE_BIND_SESSION_IP", "t", "true or false"),  # pydantic alone would take it
    ("KEYGATE_REQUIRE_ALLOWLIST_FOR_WITHDRAW", "enabled", "true or false"),
    ("KEYGATE_CACHE_TTL_SECONDS", "2s", "a number of seconds"),
    ("KEYGATE_CACHE_TTL_SECONDS", "nan", "a number of seconds"),
    ("KEYGATE_CACHE_TTL_SECONDS", "-1", "from 0 to 86400"),
    ("KEYGATE_CACHE_TTL_SECONDS", "86401", "from 0 to 86400"),
    ("KEYGATE_TRUSTED_PROXIES", "10.0.0.0/33", "IP addresses or CIDR ranges"),
    ("KEYGATE_TRUSTED_PROXIES", "10.0.0.1, proxy.internal", "'proxy.internal' is not an IP address"),
    ("KEYGATE_PORT", "-1", "from 1 to 65535"),
    ("KEYGATE_PORT", "0", "from 1 to 65535"),
    ("KEYGATE_PORT", "65536", "from 1 to 65535"),
    ("KEYGATE_PORT", "eighty", "a whole number"),
    ("KEYGATE_DEFAULT_REPLAY_MODE", "never", "compatible, increasing, unique"),
    ("KEYGATE_LOCKOUT_FAILURES", "101", "from 1 to 100"),
    ("KEYGATE_LOCKOUT_FAILURES", "0", "from 1 to 100"),
    ("KEYGATE_LOCKOUT_SECONDS", "-5", "0 to"),
    ("KEYGATE_THROTTLE_IP_FAILURES", "0", "1 or more"),
    ("KEYGATE_THROTTLE_WINDOW_SECONDS", "15m", "a whole number of seconds"),
    ("KEYGATE_SESSION_IDLE_SECONDS", "0", "a whole number of seconds"),
    ("KEYGATE_MAX_BODY_BYTES", "64k", "a whole number of bytes"),
    ("KEYGATE_MAX_BODY_BYTES", "1023", "from 1024"),
    ("KEYGATE_KEEP_ALIVE_SECONDS", "0", "from 1 to 3600"),
    ("KEYGATE_KEEP_ALIVE_SECONDS", "5s", "a whole number"),
    ("KEYGATE_REQUEST_TIMEOUT_SECONDS", "0", "a number of seconds"),
    ("KEYGATE_MAX_CONNECTIONS_PER_ADDRESS", "-1", "a whole number"),
    ("KEYGATE_KEY_MAX_IDLE_DAYS_WITHOUT_ALLOWLIST", "-1", "a whole number of days"),
    ("KEYGATE_REDIS_NAMESPACE", "my app", "letters, digits"),
    ("KEYGATE_LOG_LEVEL", "loud", "critical, error, warning, info, debug, trace"),
]


@pytest.mark.parametrize(("name", "value", "accepts"), BAD_VALUES)
def test_a_bad_value_is_one_line_naming_the_variable_and_what_it_accepts(env, name: str, value: str, accepts: str) -> None:
    env(**{name: value})
    lines = refusal()
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert lines[0].startswith(f"{name}={value!r} is refused"), lines
    assert f"it accepts {accepts}" in lines[0] or accepts in lines[0], lines


@pytest.mark.parametrize("word", sorted(BOOLEAN_WORDS))
def test_booleans_take_exactly_the_eight_words_in_any_case(env, word: str) -> None:
    for spelling in (word, word.upper(), word.capitalize(), f" {word} "):
        env(KEYGATE_BIND_SESSION_IP=spelling)
        assert Settings.from_env().bind_session_ip is BOOLEAN_WORDS[word]


@pytest.mark.parametrize(("name", "value"), [
    ("KEYGATE_MASTER_KEY", "hunter2-not-a-key"),
    ("KEYGATE_MASTER_KEY", base64.b64encode(b"sixteen byte key").decode()),
    ("KEYGATE_DATABASE_URL", "mysql://keygate:hunter2@db/keygate"),
    ("KEYGATE_REDIS_URL", "http://:hunter2@cache:6379"),
])
def test_a_refused_secret_is_never_echoed(env, name: str, value: str) -> None:
    env(**{name: value})
    (line,) = refusal()
    assert line.startswith(f"{name} (value not shown) is refused"), line
    assert "hunter2" not in line and value not in line


def test_an_unknown_keygate_variable_is_refused_with_the_nearest_name(env) -> None:
    env(KEYGATE_BIND_SESION_IP="false")
    (line,) = refusal()
    assert line.startswith("KEYGATE_BIND_SESION_IP is not a keygate setting (did you mean KEYGATE_BIND_SESSION_IP?)")


def test_the_variables_read_elsewhere_and_the_test_suites_are_not_unknown(env) -> None:
    env(KEYGATE_PASSWORD="pw", KEYGATE_API_SECRET="s", KEYGATE_PREVIOUS_MASTER_KEYS="", KEYGATE_TEST_PG="x",
        KEYGATE_TEST_ANYTHING="y")
    Settings.from_env()
    env(KEYGATE_MY_SECRET="s")
    refusal()
    Settings.from_env(also_read=["KEYGATE_MY_SECRET"])  # keygate sign --secret-env KEYGATE_MY_SECRET


def test_several_problems_give_one_line_each(env) -> None:
    env(KEYGATE_PORT="x", KEYGATE_BIND_SESSION_IP="maybe", KEYGATE_PROT="1")
    lines = refusal()
    assert len(lines) == 3
    assert {line.split(" ", 1)[0].split("=", 1)[0] for line in lines} == {
        "KEYGATE_PORT", "KEYGATE_BIND_SESSION_IP", "KEYGATE_PROT"}


def test_values_are_read_and_typed(env, tmp_path: Path) -> None:
    key = base64.b64encode(bytes(32)).decode()
    env(KEYGATE_DATA_DIR=str(tmp_path), KEYGATE_PORT=" 8080 ", KEYGATE_CACHE_TTL_SECONDS="0.5",
        KEYGATE_TRUSTED_PROXIES="127.0.0.1, 10.0.0.0/8 ::1", KEYGATE_DEFAULT_REPLAY_MODE=" Unique ",
        KEYGATE_MASTER_KEY=key, KEYGATE_LOG_LEVEL="WARNING", KEYGATE_REDIS_URL="", KEYGATE_HOST="")
    s = Settings.from_env()
    assert (s.data_dir, s.port, s.cache_ttl_seconds) == (tmp_path, 8080, 0.5)
    assert s.trusted_proxies == ("127.0.0.1", "10.0.0.0/8", "::1")
    assert (s.default_replay_mode, s.master_key, s.log_level) == ("unique", key, "warning")
    assert s.redis_url is None and s.host == "127.0.0.1", "an empty variable counts as unset"
    assert s.resolved_database_url == f"sqlite+aiosqlite:///{tmp_path / 'keygate.db'}"
    assert s.resolved_master_key_file == tmp_path / "master.key"


@pytest.mark.parametrize(("given", "used"), [
    ("postgresql://u@h:5432/db", "postgresql+asyncpg://u@h:5432/db"),
    ("postgres://u@h/db", "postgresql+asyncpg://u@h/db"),
    ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
    ("sqlite:///var/x.db", "sqlite+aiosqlite:///var/x.db"),
    ("sqlite+aiosqlite:////abs/x.db", "sqlite+aiosqlite:////abs/x.db"),
])
def test_plain_database_urls_get_the_async_driver(env, given: str, used: str) -> None:
    env(KEYGATE_DATABASE_URL=given)
    assert Settings.from_env().resolved_database_url == used
    assert Settings(database_url=given).database_url == used


def test_options_win_over_the_environment_and_are_named_when_refused(env) -> None:
    env(KEYGATE_PORT="8001")
    assert Settings.from_env(port=9000).port == 9000
    with pytest.raises(InvalidSetting) as caught:
        Settings.from_env(option_names={"port": "--port"}, port=0)
    assert caught.value.lines == ["--port=0 is refused: it accepts a whole number from 1 to 65535"]


def test_a_certificate_needs_its_key(env, tmp_path: Path) -> None:
    env(KEYGATE_TLS_CERT_FILE=str(tmp_path / "cert.pem"))
    (line,) = refusal()
    assert "KEYGATE_TLS_CERT_FILE" in line and "KEYGATE_TLS_KEY_FILE" in line and "both" in line


def test_settings_built_in_code_do_not_read_the_environment(env, tmp_path: Path) -> None:
    env(KEYGATE_PORT="9999", KEYGATE_BIND_SESSION_IP="false")
    s = Settings(data_dir=tmp_path)
    assert (s.port, s.bind_session_ip) == (8000, True)
    with pytest.raises(pydantic.ValidationError):
        Settings(bind_session_ip="ture")  # type: ignore[arg-type]


def test_settings_are_frozen_and_copied_with_changes() -> None:
    s = Settings()
    with pytest.raises(pydantic.ValidationError):
        s.port = 1  # type: ignore[misc]
    changed = s.model_copy(update={"bind_session_ip": False})
    assert changed.bind_session_ip is False and s.bind_session_ip is True and changed.port == s.port


def test_the_throttle_defaults_are_the_policys() -> None:
    policy, s = ThrottlePolicy(), Settings()
    assert (s.throttle_ip_failures, s.throttle_key_failures, s.throttle_user_failures) == (
        policy.ip_failures, policy.key_failures, policy.user_failures)
    assert (s.throttle_window_seconds, s.throttle_max_backoff_seconds) == (policy.window_seconds, policy.max_backoff_seconds)
    assert (s.lockout_failures, s.lockout_seconds) == (policy.lockout_failures, policy.lockout_seconds)
