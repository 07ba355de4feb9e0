"""``/healthz`` (the process lives) and ``/readyz`` (this node can authenticate now), for load balancers.

``/AP/Ping`` stays what APEX clients know: it answers ``PONG`` whatever the database does.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from keygate.api import replies
from keygate.api.middleware import CONTEXT_KEY
from keygate.service.health import READY_TIMEOUT_SECONDS, readiness

_NO_STORE = {"Cache-Control": "no-store"}

_CHECKS: dict[str, Any] = {
    "type": "object",
    "description": "Each part: `ok`, or why it failed (`did not answer within 0.5 s`, `unreachable (...)`)",
    "properties": {"database": {"type": "string"}, "redis": {"type": "string"}},
    "required": ["database"],
}
_HEALTH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["result", "errormsg", "errorcode", "status"],
    "properties": {
        "result": {"type": "boolean"}, "errormsg": {"type": ["string", "null"]}, "errorcode": {"type": "integer"},
        "detail": {"type": ["string", "null"]}, "status": {"type": "string", "enum": ["alive", "ready", "not ready"]},
        "checks": _CHECKS,
    },
}


def _body(result: bool, status: str, errormsg: str | None = None, checks: dict[str, str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"result": result, "errormsg": errormsg, "errorcode": 0 if result else 102,
                            "detail": None, "status": status}
    if checks is not None:
        body["checks"] = checks
    return body


async def healthz(request: Request) -> Response:
    return replies.ApexJSON(_body(True, "alive"), headers=_NO_STORE)


async def readyz(request: Request) -> Response:
    state = await readiness(request.scope[CONTEXT_KEY].keygate)
    if state.ready:
        return replies.ApexJSON(_body(True, "ready", checks=state.checks), headers=_NO_STORE)
    failed = ", ".join(f"{part} {state.checks[part]}" for part in state.failed)
    return replies.ApexJSON(_body(False, "not ready", f"Not ready: {failed}", state.checks), status_code=503, headers=_NO_STORE)


def install_health(app: FastAPI) -> None:
    content = {"application/json": {"schema": _HEALTH_SCHEMA}}
    app.add_api_route(
        "/healthz", healthz, methods=["GET"], name="healthz", operation_id="healthz", tags=["Health"],
        summary="Liveness: answers 200 while the process lives",
        description="Touches neither the database nor Redis. Restart the process when this fails.",
        response_class=replies.ApexJSON, responses={200: {"description": "The process is alive", "content": content}},
    )
    app.add_api_route(
        "/readyz", readyz, methods=["GET"], name="readyz", operation_id="readyz", tags=["Health"],
        summary="Readiness: 200 only while the database (and Redis, where configured) answer",
        description=(
            f"Each part must answer within {READY_TIMEOUT_SECONDS:g} s. 503 names the part that failed "
            "(`checks`); a load balancer should stop sending traffic to this node until it answers 200 again. "
            "Recovery needs no restart."
        ),
        response_class=replies.ApexJSON,
        responses={200: {"description": "Ready to authenticate", "content": content},
                   503: {"description": "A part failed; `errormsg` and `checks` name it", "content": content}},
    )
