"""One answer per path for every HTTP method: HEAD wherever GET works, and a 405 whose `Allow` names them all.

FastAPI answers a method a path lacks from the first route that matched the path alone, so
`OPTIONS /api/lot` said `Allow: GET` although PUT and POST work there too, and HEAD was refused
on every API route while it worked on the static files. `AllowedMethods` (ASGI middleware) holds
each path's methods, gathered from every route once the app is built, and answers from them.
"""

from __future__ import annotations

import re

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def path_methods(app: FastAPI) -> list[tuple[re.Pattern[str], frozenset[str]]]:
    """Each route path of `app` (mounts aside: they answer for themselves) with every method it serves."""
    methods: dict[str, set[str]] = {}
    for route in iter_route_contexts(app.routes):
        if route.path is not None and route.methods:
            methods.setdefault(route.path, set()).update(route.methods)
    table = []
    for path, served in methods.items():
        if "GET" in served:
            served.add("HEAD")
        table.append((compile_path(path)[0], frozenset(served)))
    return table


class AllowedMethods:
    """ASGI middleware over `path_methods`: HEAD is answered as GET without the body; any other method a path
    does not serve gets 405 with `Allow` listing what it does serve."""

    def __init__(self, app: ASGIApp, table: list[tuple[re.Pattern[str], frozenset[str]]]) -> None:
        self.app, self.table = app, table

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        allowed = frozenset().union(*(served for regex, served in self.table if regex.match(scope["path"])))
        method = scope["method"]
        if not allowed or (method in allowed and method != "HEAD"):
            await self.app(scope, receive, send)  # an unknown path (404, or a mount) or a method the route serves
        elif method == "HEAD" and "GET" in allowed:
            await self.app({**scope, "method": "GET"}, receive, _headers_only(send))
        else:
            response = JSONResponse({"detail": "Method Not Allowed"}, status_code=405,
                                    headers={"Allow": ", ".join(sorted(allowed))})
            await response(scope, receive, send)


def _headers_only(send: Send) -> Send:
    """A HEAD answer: the GET's status and headers, then an empty end, whatever the app goes on sending (an event
    stream stops when it sees the client gone)."""
    ended = False

    async def send_head(message: Message) -> None:
        nonlocal ended
        if ended:
            return
        if message["type"] == "http.response.body":
            ended = True
            message = {"type": "http.response.body", "body": b"", "more_body": False}
        await send(message)

    return send_head
