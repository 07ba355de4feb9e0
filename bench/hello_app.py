"""A bare Starlette hello, served the way ``keygate serve`` serves keygate (one worker, uvicorn's
defaults: uvloop and httptools when installed, access log off, no proxy headers). ``make bench``
measures it in the same rounds as keygate, as the reference for what the server stack alone costs.

Usage: ``python bench/hello_app.py PORT``
"""

from __future__ import annotations

import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


async def ping(request: Request) -> Response:
    return JSONResponse({"msg": "PONG"})


app = Starlette(routes=[Route("/AP/Ping", ping), Route("/readyz", ping)])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False, proxy_headers=False,
                loop="uvloop", http="httptools")
