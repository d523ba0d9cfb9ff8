"""The verdict contract (infer -> record) and record's `verdicts` events (record -> api, plc)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
import orjson

from linewatch.clock import now_ns
from linewatch.wire.codec import Count, MessageError, decode_problem, load_json
from linewatch.wire.frames import FrameHeader, peek_identity

Final = Literal["PASS", "FAIL", "REVIEW"]


class VerdictError(MessageError):
    """A verdict that failed validation; `identity` is its part's (camera, stream, seq) when readable, so
    record can fail that part at once, naming the problem, instead of letting it time out."""

    def __init__(self, text: str, identity: tuple[str, str, int] | None):
        super().__init__(text)
        self.identity = identity


@dataclass
class Verdict:
    """The canonical result of one frame (infer -> record -> events).

    `decided_by` is `model`, `rule:<name>`, `timeout` or `not_inspected`; `reasons` explains overrides.
    `timings_ms` holds per-stage durations (queue, preprocess, inference, failsafe, ...).
    """

    camera: str
    stream: str
    seq: Count
    part_id: str
    final: Final
    decided_by: str
    reasons: list[str] = field(default_factory=list)
    recipe: str = ""
    model_hash: str | None = None
    model_name: str | None = None
    ruleset_hash: str | None = None
    label: str | None = None
    score: float | None = None
    probs: dict[str, float] | None = None
    t_capture_ns: Count = 0
    t_sent_ns: Count = 0
    t_received_ns: Count = 0
    t_decided_ns: Count = 0
    timings_ms: dict[str, float] = field(default_factory=dict)
    worker: str = ""
    truth: dict[str, Any] | None = None
    image: str | None = None  # set by record when the image is kept

    def to_bytes(self) -> bytes:
        return orjson.dumps(self, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)

    @classmethod
    def from_bytes(cls, raw: bytes) -> Verdict:
        """Validated against the fields' types (msgspec, in C: record decodes every verdict of the line).

        A field this version does not know is ignored, so a newer worker's verdicts are still recorded;
        a known field with a wrong type or value is refused, naming the field (VerdictError)."""
        try:
            return _VERDICT.decode(raw)
        except msgspec.DecodeError as exc:
            raise VerdictError(f"verdict: {decode_problem(exc)}", peek_identity(raw)) from None

    @classmethod
    def many_from_bytes(cls, raw: bytes) -> tuple[list[Verdict], list[VerdictError]]:
        """The verdicts of a `verdict_batch` message, and what is wrong with each item that fails validation
        (its neighbours are kept: one bad item does not cost the batch's other parts their verdicts)."""
        try:
            return _VERDICTS.decode(raw), []
        except msgspec.ValidationError:
            pass  # one item or more is bad: decode them one by one
        except msgspec.DecodeError as exc:
            raise MessageError(f"verdict batch: {decode_problem(exc)}") from None
        try:
            items = _RAW_ITEMS.decode(raw)
        except msgspec.DecodeError as exc:
            raise MessageError(f"verdict batch: {decode_problem(exc)}") from None
        good, errors = [], []
        for i, item in enumerate(items):
            try:
                good.append(cls.from_bytes(item))
            except VerdictError as exc:
                errors.append(VerdictError(f"verdict batch: item {i}: {exc}", exc.identity))
        return good, errors

    @classmethod
    def not_inspected(cls, header: FrameHeader, recipe: str, reason: str) -> Verdict:
        """A frame that never reached a model: rejected, with its reason."""
        return cls(
            camera=header.camera, stream=header.stream, seq=header.seq, part_id=header.part_id,
            final="FAIL", decided_by="not_inspected", reasons=[reason], recipe=recipe,
            t_capture_ns=header.t_capture_ns, t_sent_ns=header.t_sent_ns, t_decided_ns=now_ns(),
            truth=header.truth,
        )


_VERDICT = msgspec.json.Decoder(Verdict)  # unknown fields are ignored: a newer sender stays readable
_VERDICTS = msgspec.json.Decoder(list[Verdict])
_RAW_ITEMS = msgspec.json.Decoder(list[msgspec.Raw])


def encode_verdict_batch(verdicts: Sequence[Verdict]) -> bytes:
    """A `verdict_batch` message body (infer -> record); `Verdict.many_from_bytes` reads it."""
    return orjson.dumps(verdicts, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


def encode_verdict_group(columns: tuple[str, ...], rows: list[tuple[Any, ...]], json_columns: tuple[str, ...],
                         commit_id: int, t_committed_ns: int, event_ms: float) -> bytes:
    """A `verdicts` event: the rows of one group commit as the store has them, column-wise.

    `json_columns` are JSON texts in the rows (sent as text: record never re-parses them); the event is
    published once the group is committed, `event_ms` after its commit.
    """
    return orjson.dumps({"commit_id": commit_id, "t_committed_ns": t_committed_ns, "event_ms": event_ms,
                         "columns": columns, "json_columns": json_columns, "rows": rows})


def decode_verdict_group(raw: bytes, json_columns: bool = True) -> list[dict[str, Any]]:
    """One dict per verdict of a `verdicts` event, as the REST API shows a row, plus the commit's stage
    times (`t_committed_ns`, `record_ms`: decided -> committed, `event_ms`: committed -> published).
    `json_columns=False` leaves the JSON columns (reasons, probs, truth) as text, for a reader that
    only counts verdicts.

    A malformed event raises MessageError (a ValueError) naming what is wrong.
    """
    group = load_json(raw, "verdicts event")
    try:
        columns, rows = group["columns"], group["rows"]
        parsed = group["json_columns"] if json_columns else ()
        stages = {"t_committed_ns": int(group["t_committed_ns"]), "event_ms": float(group["event_ms"])}
        out = []
        for values in rows:
            if len(values) != len(columns):
                raise MessageError(f"verdicts event: a row has {len(values)} values for {len(columns)} columns")
            row = dict(zip(columns, values, strict=True))
            for name in parsed:
                row[name] = orjson.loads(row[name]) if row[name] else None
            decided = row.get("t_decided_ns")
            row.update(stages, record_ms=(stages["t_committed_ns"] - decided) / 1e6 if decided else None)
            out.append(row)
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise MessageError(f"verdicts event: {type(exc).__name__} {exc}") from None
    return out
