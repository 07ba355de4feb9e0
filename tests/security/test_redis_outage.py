"""When Redis is unreachable, authentication fails closed (503) on every path, /readyz says so, and all recovers by
itself; nothing stored is lost."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from abuse_helpers import signed
from outage_helpers import make_caller, probe, refused_as_unavailable, served, sign_in_everywhere

from keygate.config import Settings
from support import free_port, need, start_server, stop_server

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class OwnRedis:
    """A Redis server of this test's own, on a free port, that the test can stop and start again."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True, text=True).stdout.strip() == "PONG":
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    need(Path(REDIS_SERVER).exists(), "redis-server (Debian package redis-server)")
    redis = OwnRedis(tmp_path)
    redis.start()
    yield redis
    redis.stop()


def _wait_for(predicate, seconds: float = 15.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


async def test_redis_outage_fails_closed_then_recovers(settings: Settings, own_redis: OwnRedis, make_user, make_key):
    user = await make_user()
    created = await make_key(user.user_id)
    server = start_server(settings.model_copy(update=dict(redis_url=own_redis.url)))
    try:
        with httpx.Client(base_url=server.base_url, timeout=10) as http:
            assert _wait_for(lambda: http.post("/AP/AuthenticateUser", headers=signed(created, user.user_id, "1")).status_code == 200)
            token = http.post("/AP/AuthenticateUser", headers=signed(created, user.user_id, "2")).json()["SessionToken"]
            assert http.post("/AP/GetUserInfo", headers={"aptoken": token}).status_code == 200

            own_redis.stop()
            assert _wait_for(lambda: http.post("/AP/GetUserInfo", headers={"aptoken": token}).status_code == 503)
            r = http.post("/AP/AuthenticateUser", headers=signed(created, user.user_id, "3"))
            assert r.status_code == 503
            assert r.json()["Authenticated"] is False and "Redis" in r.json()["errormsg"]
            r = http.post("/AP/GetUserInfo", headers={"aptoken": token})
            assert r.json() == {"result": False, "errormsg": r.json()["errormsg"], "errorcode": 102, "detail": None}
            assert http.post("/AP/AuthenticateUser", json={"UserName": user.username, "Password": user.password}).status_code == 503
            assert http.get("/AP/Ping").status_code == 200, "the server itself stays up"

            own_redis.start()  # an empty Redis, on the same port
            assert _wait_for(lambda: http.post("/AP/GetUserInfo", headers={"aptoken": token}).status_code == 200), \
                "the session made before the outage still works: the database kept it"
            assert http.post("/AP/AuthenticateUser", headers=signed(created, user.user_id, "4")).status_code == 200
            assert "Traceback" not in server.log()
    finally:
        stop_server(server)


async def test_redis_outage_on_every_authenticating_path_and_readyz(settings: Settings, own_redis: OwnRedis, kg) -> None:  # type: ignore[no-untyped-def]
    caller = await make_caller(kg, secrets.token_hex(3))
    server = start_server(settings.model_copy(update={"redis_url": own_redis.url}))
    try:
        with httpx.Client(base_url=server.base_url, timeout=30) as http:
            assert _wait_for(lambda: http.get("/readyz").status_code == 200)
            assert http.get("/readyz").json()["checks"] == {"database": "ok", "redis": "ok"}
            sign_in_everywhere(http, server.base_url.replace("http://", "ws://") + "/WSGateway", caller)

            own_redis.stop()
            assert _wait_for(lambda: http.post("/AP/GetUserInfo", headers={"aptoken": caller.token}).status_code == 503)
            seen = probe(http, server.base_url, caller)
            assert not refused_as_unavailable(seen, "Redis"), refused_as_unavailable(seen, "Redis")
            ready = http.get("/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["database"] == "ok"
            assert ready.json()["checks"]["redis"] != "ok" and "redis" in ready.json()["errormsg"]
            assert http.get("/healthz").status_code == 200

            own_redis.start()
            assert _wait_for(lambda: http.get("/readyz").status_code == 200), "/readyz did not recover"
            seen = probe(http, server.base_url, caller)
            assert not served(seen), served(seen)
            assert "Traceback" not in server.log()
    finally:
        stop_server(server)
        if caller.ws is not None:
            caller.ws.close()
