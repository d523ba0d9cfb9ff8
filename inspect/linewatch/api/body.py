"""Request bodies: a size cap checked before the body is read, and JSON bodies checked before FastAPI parses them.

`BodyLimit` (ASGI middleware) answers 413 on a Content-Length over `api.max_body_bytes` without
reading a byte of the body, and counts a chunked body as it arrives, stopping at the cap; the app
only ever sees a body within the cap. `JsonRoute` (the route class of every API route) refuses a
body that is not `application/json` (415), not UTF-8 (400) or not JSON text (422) with an answer
naming the problem, where FastAPI answered a bare 400 or, for bytes that are not UTF-8, a 500.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from email.message import Message as MimeHeader
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from linewatch.api.errors import invalid, refusals

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` is answered 413 (and the connection closed) before it is
    read whole; a body within the cap is read here and handed on to the app unchanged."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is None:
            await _refuse(scope, send, 400, "Content-Length is not a byte count")
            return
        if declared > self.max_bytes:
            await _refuse(scope, send, 413, f"request body of {declared} bytes is over the {self.max_bytes}-byte "
                                          "limit (api.max_body_bytes)")
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client hung up before its body was complete: nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await _refuse(scope, send, 413, f"request body is over the {self.max_bytes}-byte limit "
                                              "(api.max_body_bytes)")
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body, handed = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal handed
            if handed:
                return await receive()  # after the body: the disconnect an event stream waits for
            handed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def _refuse(scope: Scope, send: Send, status: int, detail: str) -> None:
    """Answer and close the connection: the rest of the body is never read."""
    response = JSONResponse({"detail": detail}, status_code=status, headers={"Connection": "close"})
    await response(scope, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.disconnect"}


def _content_length(scope: Scope) -> int | None:
    """The declared body size (0 when there is none), or None when the header is not a byte count."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return 0


def _json_problem(content_type: str | None, body: bytes) -> Exception | None:
    """Why a non-empty body is not a JSON document the API can take, as the exception to answer with."""
    header = MimeHeader()
    header["content-type"] = content_type or ""
    media = header.get_content_type() if content_type else ""
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        return HTTPException(415, f"request body must be application/json, got {content_type or 'no Content-Type'!r}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return HTTPException(400, f"request body is not UTF-8: byte 0x{body[exc.start]:02x} at offset {exc.start} "
                                  f"({exc.reason})")
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        return invalid(("body", exc.pos), f"JSON decode error: {exc.msg}", "json_invalid")
    where = _lone_surrogate(document, ("body",))
    if where is not None:
        return invalid(where, "a lone UTF-16 surrogate (\\ud800-\\udfff) is not a character")
    return None


def _lone_surrogate(value: Any, loc: tuple[str | int, ...]) -> tuple[str | int, ...] | None:
    """Where a JSON document holds a string with a lone surrogate escape (`"\\ud800"`), which UTF-8 cannot carry."""
    if isinstance(value, str):
        return loc if _LONE_SURROGATE.search(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _lone_surrogate(key, loc) or _lone_surrogate(item, (*loc, key))
            if found is not None:
                return found
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = _lone_surrogate(item, (*loc, i))
            if found is not None:
                return found
    return None


BODY_REFUSALS = {400: "The body is not UTF-8.", 415: "The body is not application/json."}
SIZE_REFUSAL = {413: "The request body is over api.max_body_bytes (or its Content-Length says so)."}


class JsonRoute(APIRoute):
    """The route class of the API: documents the refusals every route can answer (413, and 400/415 where it takes a
    body) and checks a JSON body before FastAPI parses it."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        own = {**SIZE_REFUSAL, **(BODY_REFUSALS if self.body_field is not None else {})}
        self.responses = {**refusals(own), **self.responses}

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def checked(request: Request) -> Response:
            body = await request.body()
            problem = _json_problem(request.headers.get("content-type"), body) if body else None
            if problem is not None:
                raise problem
            return await handler(request)

        return checked
