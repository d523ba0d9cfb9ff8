"""What every wire message shares: the error type, bounded integers and msgspec decoding that names the field."""

from __future__ import annotations

import json
from typing import Annotated, Any, TypeVar

import msgspec
import orjson


class MessageError(ValueError):
    """A message does not follow its contract; the text names the field."""


def load_json(raw: bytes, what: str) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)  # orjson.JSONDecodeError is a json.JSONDecodeError
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MessageError(f"{what}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise MessageError(f"{what}: must be a JSON object")
    return data


MAX_INT64 = 2**63 - 1
#: seq and nanosecond times: SQLite stores signed 64-bit integers (and a huge seq would make record's gap
#: tracking watch billions of frames), so bigger numbers are refused at the door.
Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT64)]
Positive = Annotated[int, msgspec.Meta(ge=1, le=MAX_INT64)]


ENCODER = msgspec.json.Encoder()
_T = TypeVar("_T")


#: What msgspec raises for a message it cannot take: besides its own errors, a string that is not UTF-8
#: (UnicodeDecodeError) and nesting deeper than Python's recursion limit (RecursionError).
DECODE_ERRORS = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


def decoded(decoder: msgspec.json.Decoder[_T], raw: bytes, what: str) -> _T:
    """A control-plane message validated by msgspec; the error names the field, e.g.
    ``alarm: Expected `str`, got `int` - at `$.kind` ``."""
    try:
        return decoder.decode(raw)
    except DECODE_ERRORS as exc:
        raise MessageError(f"{what}: {decode_problem(exc)}") from None


def decode_problem(exc: Exception) -> str:
    """msgspec's text names the field (`... - at `$.seq``); a syntax error says so."""
    if isinstance(exc, msgspec.ValidationError):
        return str(exc)
    if isinstance(exc, RecursionError):
        return "not valid JSON (nested too deeply)"
    return f"not valid JSON ({exc})"


def check_storable(value: Any, what: str, field: str) -> None:
    """A free-form JSON field (a part's truth, an action's detail) must be one the line can write again:
    orjson, which record stores it with, takes integers of 64 bits and nesting up to 255 levels."""
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        raise MessageError(f"{what}: field '{field}' cannot be stored ({exc})") from None
