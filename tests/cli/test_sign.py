"""``keygate sign``: the protocol's test vector, with the secret from a file, stdin or the environment.

The secret is never accepted on the command line, where it would land in shell history and ``ps``.
"""

from __future__ import annotations

from pathlib import Path

from cli_support import TEST_VECTOR as V
from cli_support import assert_clean_refusal, clean_env, keygate

SIGN_ARGS = ("sign", "--api-key", V["api_key"], "--user-id", V["user_id"], "--nonce", V["nonce"])


def test_secret_from_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(V["secret"] + "\n")
    result = keygate(*SIGN_ARGS, "--secret-file", str(secret_file), env=clean_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == V["signature"]


def test_secret_from_stdin_piped() -> None:
    result = keygate(*SIGN_ARGS, env=clean_env(), input=V["secret"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == V["signature"]


def test_secret_from_stdin_dash() -> None:
    result = keygate(*SIGN_ARGS, "--secret-file", "-", env=clean_env(), input=V["secret"] + "\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == V["signature"]


def test_secret_from_default_env_var() -> None:
    result = keygate(*SIGN_ARGS, env=clean_env(KEYGATE_API_SECRET=V["secret"]))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == V["signature"]


def test_secret_from_named_env_var() -> None:
    result = keygate(*SIGN_ARGS, "--secret-env", "MY_DESK_SECRET", env=clean_env(MY_DESK_SECRET=V["secret"]))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == V["signature"]


def test_headers_output_is_ready_for_curl() -> None:
    result = keygate(*SIGN_ARGS, "--headers", env=clean_env(KEYGATE_API_SECRET=V["secret"]))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"APIKey: {V['api_key']}",
        f"Signature: {V['signature']}",
        f"UserId: {V['user_id']}",
        f"Nonce: {V['nonce']}",
    ]


def test_a_wrong_secret_gives_another_signature() -> None:
    result = keygate(*SIGN_ARGS, env=clean_env(KEYGATE_API_SECRET=V["secret"][:-1] + "d"))
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip()) == 64
    assert result.stdout.strip() != V["signature"]


def test_there_is_no_option_for_the_secret_on_argv() -> None:
    result = keygate(*SIGN_ARGS, "--secret", V["secret"], env=clean_env())
    assert_clean_refusal(result, "no such option")
    assert V["signature"] not in result.stdout
    help_text = keygate("sign", "--help", env=clean_env(COLUMNS="200")).stdout
    options = {word.strip(",") for word in help_text.split() if word.startswith("--")}
    # --private-key names a file (ed25519 keys), like --secret-file: no option takes key material itself.
    assert options == {"--api-key", "--user-id", "--nonce", "--secret-file", "--secret-env", "--private-key", "--encoding",
                       "--headers", "--help", "--v2", "--method", "--url", "--body", "--created"}


def test_no_secret_anywhere_is_a_clear_error() -> None:
    result = keygate(*SIGN_ARGS, env=clean_env())
    assert_clean_refusal(result, "secret")
    assert result.stdout == ""


def test_missing_secret_file_is_a_clear_error(tmp_path: Path) -> None:
    result = keygate(*SIGN_ARGS, "--secret-file", str(tmp_path / "absent"), env=clean_env())
    assert_clean_refusal(result)


def test_v2_prints_the_readme_worked_example() -> None:
    """``keygate sign --v2``: the Signature v2 headers of one request (new with Signature v2)."""
    result = keygate("sign", "--v2", "--api-key", V["api_key"], "--method", "POST", "--url",
                     "http://127.0.0.1:8000/AP/GetUserInfo?UserId=42", "--body", "{}", "--created", "1700000000",
                     "--nonce", "7f3a9c0e5b2d4f61", env=clean_env(), input=V["secret"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "Content-Digest: sha-256=:RBNvo1WzZ4oRRq0W9+hknpT7T8If536DEMBg9hyq/4o=:",
        'Signature-Input: kg=("@method" "@path" "@query" "content-digest");created=1700000000;nonce="7f3a9c0e5b2d4f61";'
        'keyid="8d4f1a2b3c5e6f708192a3b4c5d6e7f8";alg="hmac-sha256"',
        "Signature: kg=:l5QBxKppBnZVIkfUiClRSKkio0IFRODWs3tZ6HO0Jr4=:",
    ]
    assert V["secret"] not in result.stdout
    missing = keygate("sign", "--v2", "--api-key", V["api_key"], env=clean_env(), input=V["secret"])
    assert_clean_refusal(missing, "--method and --url")
