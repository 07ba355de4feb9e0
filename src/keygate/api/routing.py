"""Constant-time dispatch of the APEX routes.

Starlette tries routes one after the other, each with a regular expression. With a GET and a POST
route per endpoint, an endpoint registered late (``GetUserInfo``) paid a dozen failed matches that
``Ping`` did not. ``EndpointIndex`` stands where the first APEX route stood and finds the route by
a dictionary lookup of the path, so every endpoint costs the same to reach. The FastAPI routes stay
registered as they were, so the OpenAPI document, ``url_path_for`` and method handling (405) are
unchanged; they are simply reached through the index.
"""

from __future__ import annotations

from collections.abc import Iterable

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute, Match, NoMatchFound
from starlette.types import Receive, Scope, Send


class EndpointIndex(BaseRoute):
    def __init__(self, routes: Iterable[APIRoute]) -> None:
        self.routes = list(routes)
        self._by_path: dict[str, list[APIRoute]] = {}
        for route in self.routes:
            self._by_path.setdefault(route.path, []).append(route)

    @staticmethod
    def _route_path(scope: Scope) -> str:
        path: str = scope["path"]
        root: str = scope.get("root_path", "")
        return path[len(root):] if root and path.startswith(root) else path

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        candidates = self._by_path.get(self._route_path(scope)) if scope["type"] == "http" else None
        if not candidates:
            return Match.NONE, {}
        partial: tuple[Match, Scope] | None = None
        for route in candidates:
            match, child_scope = route.matches(scope)
            if match is Match.FULL:
                return match, child_scope
            if match is Match.PARTIAL and partial is None:
                partial = (match, child_scope)
        return partial or (Match.NONE, {})

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The matching FastAPI route put itself in the scope (``child_scope["route"]``).
        route: APIRoute = scope["route"]
        await route.handle(scope, receive, send)

    def url_path_for(self, name: str, /, **path_params: object):  # type: ignore[no-untyped-def]
        for route in self.routes:
            try:
                return route.url_path_for(name, **path_params)
            except NoMatchFound:
                pass
        raise NoMatchFound(name, path_params)


def index_routes(app: FastAPI, prefix: str = "/AP/") -> None:
    """Put one ``EndpointIndex`` in front of the app's ``prefix`` routes, where the first one stood."""
    routes = app.router.routes
    apex = [r for r in routes if isinstance(r, APIRoute) and r.path.startswith(prefix)]
    if not apex:
        return
    routes.insert(routes.index(apex[0]), EndpointIndex(apex))
