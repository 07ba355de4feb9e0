"""WebSocket load for ``make bench``: APEX frames on N connections, each a closed loop (send a
frame, wait for its reply), for a fixed time. Run as its own process, pinned to the load generator's
core; prints one JSON line with frames, frames per second, errors and its own CPU use (a client near
100 % of its core is the limit, not the server).

Input (argv[1], JSON): url, seconds, runs [{endpoint ("AuthenticateUser" or "GetUserInfo"), connections,
prepared}], key {api_key, user_id, secret, next_nonce}; one result line per run, in order. Every connection first signs in with AuthenticateUser
(fresh nonce); GetUserInfo frames then need no aptoken (the connection's session, as in APEX).
AuthenticateUser frames carry fresh, increasing nonces, signed before the clock starts.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from websockets.asyncio.client import connect

from keygate.domain.signature import compute_signature


class Nonces:
    def __init__(self, key: dict[str, Any], prepared: int) -> None:
        self.key = key
        self.next = int(key["next_nonce"])
        self.ready: list[str] = [self._make() for _ in range(prepared)]
        self.late = 0

    def _make(self) -> str:
        nonce = str(self.next)
        self.next += 1
        k = self.key
        payload = {"APIKey": k["api_key"], "UserId": k["user_id"], "Nonce": nonce,
                   "Signature": compute_signature(k["secret"], nonce, k["user_id"], k["api_key"])}
        return json.dumps(payload, separators=(",", ":"))

    def take(self) -> str:
        if self.ready:
            return self.ready.pop()
        self.late += 1
        return self._make()


async def one(spec: dict[str, Any]) -> dict[str, Any]:
    endpoint = spec["endpoint"]
    # Popped from the end: reverse so that nonces still go out in increasing order.
    nonces = Nonces(spec["key"], int(spec.get("prepared", 0)) + spec["connections"])
    nonces.ready.reverse()
    frames = errors = 0
    first_error = ""
    conns = [await connect(spec["url"], max_size=2**20, compression=None) for _ in range(spec["connections"])]
    for ws in conns:  # every connection signs in first
        await ws.send(json.dumps({"m": 0, "i": 0, "n": "AuthenticateUser", "o": nonces.take()}))
        reply = await ws.recv()
        if "SessionToken" not in reply:
            errors += 1
            first_error = first_error or f"sign-in: {str(reply)[:300]}"
    stop = time.monotonic() + spec["seconds"]

    async def loop(ws: Any) -> None:
        nonlocal frames, errors, first_error
        i = 2
        while time.monotonic() < stop:
            o = nonces.take() if endpoint == "AuthenticateUser" else "{}"
            await ws.send('{"m":0,"i":%d,"n":"%s","o":%s}' % (i, endpoint, json.dumps(o)))
            reply = await ws.recv()
            frames += 1
            if "errorcode" in reply:
                errors += 1
                first_error = first_error or str(reply)[:300]
            i += 2

    cpu0, wall0 = time.process_time(), time.monotonic()
    await asyncio.gather(*(loop(ws) for ws in conns))
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    for ws in conns:
        await ws.close()
    return {"frames": frames, "seconds": round(wall, 3), "frames_per_second": round(frames / wall, 1), "errors": errors,
            "client_cpu_percent": round(cpu / wall * 100, 1), "signed_late": nonces.late, "next_nonce": nonces.next,
            "first_error": first_error}


async def main(spec: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    key = dict(spec["key"])
    for run in spec["runs"]:
        result = await one({**run, "url": spec["url"], "seconds": spec["seconds"], "key": key})
        key["next_nonce"] = result["next_nonce"]
        out.append(result)
    return out


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(main(spec))
    else:
        result = uvloop.run(main(spec))
    for line in result:
        print("WS_JSON " + json.dumps(line), flush=True)
