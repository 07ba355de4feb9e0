"""The SDK installs alone: a client needs neither the server's packages nor its database drivers.

The base distribution ``keygate`` is the SDK (``httpx`` only); the server is the ``server`` extra. Proved
three ways: the declared dependencies; a Python in which every package of the server extra fails to
import, signing in to a real keygate server with ``keygate.Client``; and a wheel built from this tree,
installed with ``--no-deps`` into a fresh virtual environment that holds nothing but it and httpx.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sdk_install_support import (
    PYPROJECT,
    base_requirements,
    extra_requirements,
    installed_closure,
    names,
    server_only_modules,
)

from keygate.service import Keygate
from keygate.service.keys import CreatedKey
from support import TEST_VECTOR as V
from support import NewUser, Server, need

# Packages a client must never need (the brief's list); all must be among the server-only modules.
KNOWN_SERVER_PACKAGES = {"sqlalchemy", "alembic", "fastapi", "starlette", "uvicorn", "argon2", "asyncpg", "aiosqlite",
                         "redis", "jinja2", "pyotp", "qrcode", "typer", "cryptography", "multipart"}

# Installed ahead of every other import finder: any server package "is not installed".
BLOCKER = """
import importlib.abc, json, os, sys
BLOCKED = frozenset(json.loads(os.environ["BLOCKED_MODULES"]))
already = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
assert not already, f"imported before the blocker: {already}"
class ServerPackagesAbsent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, ServerPackagesAbsent())
"""

# What a client does: sign in with a key, read its user, sync and async; sign the test vector.
CLIENT = """
import asyncio, json, os, sys
import keygate
from keygate.domain.signature import compute_signature
base, user_id, api_key, secret = (os.environ[n] for n in ("KG_URL", "KG_USER_ID", "KG_API_KEY", "KG_SECRET"))
with keygate.Client(base, user_id, api_key, secret) as client:
    user = client.call("GetUserInfo")
    client.logout()
async def async_user():
    async with keygate.AsyncClient(base, int(user_id), api_key, secret) as client:
        return await client.call("GetUserInfo")
try:
    import sqlalchemy
    server_importable = True
except ImportError:
    server_importable = False
print(json.dumps({"user": user, "async_user": asyncio.run(async_user()), "keygate": keygate.__file__,
                  "signature": compute_signature(*json.loads(os.environ["KG_VECTOR"])),
                  "sqlalchemy_importable": server_importable}))
"""

VECTOR_ARGS = [V["secret"], V["nonce"], V["user_id"], V["api_key"]]
SIGN_ARGS = ["sign", "--api-key", V["api_key"], "--user-id", V["user_id"], "--nonce", V["nonce"]]


def _env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYGATE_")}
    env.update(values)
    return env


def _client_env(server: Server, user: NewUser, key: CreatedKey) -> dict[str, str]:
    revealed = key.reveal()
    return {"KG_URL": server.base_url, "KG_USER_ID": str(user.user_id), "KG_API_KEY": str(revealed["APIKey"]),
            "KG_SECRET": str(revealed["APISecret"]), "KG_VECTOR": json.dumps(VECTOR_ARGS)}


def _check_client_output(result: subprocess.CompletedProcess[str], user: NewUser) -> dict[str, Any]:
    assert result.returncode == 0, result.stdout + result.stderr
    out: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["user"]["UserId"] == out["async_user"]["UserId"] == user.user_id
    assert out["user"]["UserName"] == user.username
    assert out["signature"] == V["signature"]
    assert out["sqlalchemy_importable"] is False
    return out


# ----- (a) the declared dependencies --------------------------------------------------------------

def test_the_base_distribution_needs_httpx_alone() -> None:
    base = names(base_requirements())
    assert base == {"httpx"}, f"the SDK must need httpx only; put server packages in the server extra: {base}"
    server = installed_closure(extra_requirements("server"))
    assert not base & names(extra_requirements("server"))
    assert {"fastapi", "sqlalchemy", "alembic", "asyncpg", "aiosqlite", "redis"} <= set(server)


def test_the_make_targets_install_the_server() -> None:
    """``make run`` and ``make test`` stay one command: each installs the server extra itself."""
    makefile = (PYPROJECT.parent / "Makefile").read_text()
    assert "install -e '.[server]'" in makefile and "install -e '.[server,dev]'" in makefile
    assert "keygate[server]" in extra_requirements("dev")


def test_every_known_server_package_is_blocked_below() -> None:
    assert KNOWN_SERVER_PACKAGES <= server_only_modules()


# ----- (b) a Python where the server's packages cannot be imported --------------------------------

def _run_without_server(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {**env, "BLOCKED_MODULES": json.dumps(sorted(server_only_modules()))}
    return subprocess.run([sys.executable, "-c", BLOCKER + code], check=False, env=env, capture_output=True, text=True, timeout=60)


async def test_the_sdk_signs_in_without_the_servers_packages(kg: Keygate, server: Server, make_user, make_key) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    key = await make_key(user.user_id, ["Trading"])
    await kg.flush()
    _check_client_output(_run_without_server(CLIENT, _env(**_client_env(server, user, key))), user)


def test_keygate_sign_works_without_the_servers_packages() -> None:
    code = "import runpy, sys\nsys.argv = ['keygate', *json.loads(os.environ['ARGS'])]\nrunpy.run_module('keygate', run_name='__main__')\n"
    result = _run_without_server(code, _env(ARGS=json.dumps(SIGN_ARGS), KEYGATE_API_SECRET=V["secret"]))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == V["signature"]


def test_a_server_command_without_the_server_says_what_to_install() -> None:
    code = "import runpy, sys\nsys.argv = ['keygate', 'serve']\nrunpy.run_module('keygate', run_name='__main__')\n"
    result = _run_without_server(code, _env())
    assert result.returncode == 2
    assert "pip install 'keygate[server]'" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


# ----- (c) a wheel, installed alone ---------------------------------------------------------------

@pytest.fixture(scope="module")
def sdk_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh virtual environment with this tree's wheel (``--no-deps``) and httpx's packages only.

    The build is pip's ordinary one (it fetches the build backend, setuptools, like any install from
    source); everything after it is offline: the wheel is installed with ``--no-index``, and httpx and
    its requirements are copied from the shared environment, file by file, as their RECORDs list them.
    """
    work = tmp_path_factory.mktemp("sdk-wheel")
    tree = work / "tree"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(PYPROJECT.parent / name, tree / name)
    shutil.copytree(PYPROJECT.parent / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    built = subprocess.run([*pip, "wheel", "--no-deps", "-w", str(work / "dist"), str(tree)],
                           check=False, capture_output=True, text=True, timeout=300)
    need(built.returncode == 0, f"a wheel build (pip fetches the build backend, setuptools): {built.stderr[-300:]}")
    (wheel,) = (work / "dist").glob("keygate-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  check=True, capture_output=True, text=True).stdout.strip())
    shared = Path(sysconfig.get_paths()["purelib"])
    for dist in installed_closure(base_requirements()).values():
        for file in dist.files or []:
            source = Path(str(dist.locate_file(file)))
            if source.is_file() and source.resolve().is_relative_to(shared.resolve()):
                target = purelib / source.resolve().relative_to(shared.resolve())
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
    yield venv


def _in_venv(venv: Path, argv: list[str], **values: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in _env(**values).items() if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}}
    return subprocess.run(argv, check=False, env=env, cwd=venv, capture_output=True, text=True, timeout=60)


def test_the_wheel_declares_httpx_alone(sdk_venv: Path) -> None:
    code = "from importlib.metadata import requires; print('\\n'.join(requires('keygate')))"
    lines = _in_venv(sdk_venv, [str(sdk_venv / "bin" / "python"), "-c", code]).stdout.splitlines()
    assert [line for line in lines if "extra ==" not in line] == ["httpx>=0.27"]
    assert any("sqlalchemy" in line and 'extra == "server"' in line for line in lines)


async def test_the_installed_wheel_signs_in(sdk_venv: Path, kg: Keygate, server: Server, make_user, make_key) -> None:  # type: ignore[no-untyped-def]
    user = await make_user()
    key = await make_key(user.user_id, [])
    await kg.flush()
    result = _in_venv(sdk_venv, [str(sdk_venv / "bin" / "python"), "-c", CLIENT], **_client_env(server, user, key))
    out = _check_client_output(result, user)
    assert out["keygate"].startswith(str(sdk_venv))  # the wheel's copy, not this tree's


def test_the_installed_keygate_command_signs_and_points_to_the_server_extra(sdk_venv: Path) -> None:
    command = str(sdk_venv / "bin" / "keygate")
    signed = _in_venv(sdk_venv, [command, *SIGN_ARGS, "--headers"], KEYGATE_API_SECRET=V["secret"])
    assert signed.returncode == 0, signed.stderr
    assert f"Signature: {V['signature']}" in signed.stdout.splitlines()
    for server_command in (["serve"], ["init"], ["user", "list"], ["key", "create", "--user", "alice"], ["audit"],
                           ["rotate-master-key"]):
        refused = _in_venv(sdk_venv, [command, *server_command])
        assert refused.returncode == 2 and "pip install 'keygate[server]'" in refused.stderr, server_command
        assert "Traceback" not in refused.stdout + refused.stderr
    helped = _in_venv(sdk_venv, [command, "--help"])
    assert helped.returncode == 0 and "keygate sign" in helped.stdout
