"""The signature helper: computes an APEX signature in the browser; the server only serves the page."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from keygate.console.web import MOUNT, base, keygate, optional_user, render
from keygate.domain.keys import looks_like_api_key


async def signature_helper(request: Request) -> Response:
    signed = await optional_user(request)
    keys = []
    if signed is not None:
        keys = await keygate(request).keys.list(signed.principal, signed.principal.user_id)
    api_key = request.query_params.get("api_key", "")
    root = base(request)
    api_prefix = root[: -len(MOUNT)] if root.endswith(MOUNT) else ""
    return render(
        request, "signature.html", signed, keys=keys,
        api_key=api_key if looks_like_api_key(api_key) else "",
        user_id=signed.principal.user_id if signed else "",
        api_prefix=api_prefix,
    )


ROUTES = [Route("/signature", signature_helper, methods=["GET"])]
