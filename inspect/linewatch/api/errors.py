"""How the web app refuses a request: one documented shape per status code, never an echo of the input.

Every refusal but a validation error is `{"detail": "<one sentence naming the problem>"}` (`Problem`);
a validation error (422) keeps FastAPI's list of `{type, loc, msg}`, but with the offending input
kept only when it is small, so a 100 MB field never comes back in the answer.
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

ECHO_MAX_CHARS = 64  # an input longer than this (as JSON) is left out of a 422
MSG_MAX_CHARS = 300  # a message that quotes its input is cut to this


class Problem(BaseModel):
    """A refused request: what was wrong, in one sentence."""

    detail: str = Field(description="What was wrong with the request, or what the line could not do.")


def refusals(described: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each status code it can refuse with, answered as a `Problem`."""
    return {code: {"model": Problem, "description": text} for code, text in described.items()}


def _small(value: Any) -> bool:
    if value is None or isinstance(value, bool | int | float):
        return True
    return isinstance(value, str) and len(value) <= ECHO_MAX_CHARS


def public_errors(errors: Any) -> list[dict[str, Any]]:
    """Validation errors as the API answers them: type, location, a bounded message, the input only if small."""
    public = []
    for error in errors:
        item: dict[str, Any] = {"type": str(error.get("type", "value_error")),
                                "loc": [part if isinstance(part, int) else str(part) for part in error.get("loc", ())],
                                "msg": str(error.get("msg", ""))[:MSG_MAX_CHARS]}
        if "input" in error and _small(error["input"]):
            item["input"] = error["input"]
        public.append(item)
    return public


async def validation_refused(request: Request, exc: Exception) -> JSONResponse:
    """The 422 handler: FastAPI's default echoes every input whole (and fails on bytes that are not UTF-8)."""
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"detail": public_errors(exc.errors())}, status_code=422)


def invalid(loc: tuple[str | int, ...], msg: str, kind: str = "value_error") -> HTTPException:
    """A 422 in the validation-error shape, for a problem found outside pydantic (what a query means, a JSON body)."""
    return HTTPException(422, [{"type": kind, "loc": list(loc), "msg": msg[:MSG_MAX_CHARS]}])
