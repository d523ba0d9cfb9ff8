"""The verdict contract (infer -> record) and record's `verdicts` events (record -> api, plc)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import msgspec
import orjson

from linewatch.clock import now_ns, part_wall_ns
from linewatch.wire.codec import DECODE_ERRORS, Count, MessageError, check_storable, decode_problem, load_json
from linewatch.wire.frames import FrameHeader, peek_identity

Final = Literal["PASS", "FAIL", "REVIEW"]
MAX_DETECTIONS = 100  # boxes kept per part: a detector's 300 padded rows are not evidence


@dataclass(frozen=True)
class Detection:
    """One box a detection model found (after NMS): its class, score, and (x, y, width, height) of the box
    in the frame's pixels, top-left corner first."""

    label: str
    score: float
    box: tuple[float, float, float, float]


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
    t_capture_mono_ns: Count | None = None  # in flight only: record's latency is monotonic (`clock.py`)
    timings_ms: dict[str, float] = field(default_factory=dict)
    worker: str = ""
    truth: dict[str, Any] | None = None
    image: str | None = None  # set by record when the image is kept
    detections: list[Detection] | None = None  # detection models: the boxes that decided the part
    signals: dict[str, float] | None = None  # the frame's drift signals (`FrameView.signals`)
    embedding: list[float] | None = None  # models with an embedding: its sketch (`watch.signals.sketch`)

    def to_bytes(self) -> bytes:
        return orjson.dumps(self, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)

    @classmethod
    def from_bytes(cls, raw: bytes) -> Verdict:
        """Validated against the fields' types (msgspec, in C: record decodes every verdict of the line).

        A field this version does not know is ignored, so a newer worker's verdicts are still recorded;
        a known field with a wrong type or value is refused, naming the field (VerdictError)."""
        try:
            v = _VERDICT.decode(raw)
        except DECODE_ERRORS as exc:
            raise VerdictError(f"verdict: {decode_problem(exc)}", peek_identity(raw)) from None
        return v.checked()

    def checked(self) -> Verdict:
        """This verdict once its truth, which goes into the part's row as JSON text, is storable."""
        if self.truth is not None:
            try:
                check_storable(self.truth, "verdict", "truth")
            except MessageError as exc:
                raise VerdictError(str(exc), (self.camera, self.stream, self.seq)) from None
        return self

    @classmethod
    def many_from_bytes(cls, raw: bytes) -> tuple[list[Verdict], list[VerdictError]]:
        """The verdicts of a `verdict_batch` message, and what is wrong with each item that fails validation
        (its neighbours are kept: one bad item does not cost the batch's other parts their verdicts)."""
        try:
            return _each(_VERDICTS.decode(raw), Verdict.checked)
        except (msgspec.ValidationError, UnicodeDecodeError, RecursionError):
            pass  # one item or more is bad: decode them one by one
        except msgspec.DecodeError as exc:
            raise MessageError(f"verdict batch: {decode_problem(exc)}") from None
        try:
            items = _RAW_ITEMS.decode(raw)
        except DECODE_ERRORS as exc:
            raise MessageError(f"verdict batch: {decode_problem(exc)}") from None
        return _each(items, cls.from_bytes)

    @classmethod
    def not_inspected(cls, part: FrameHeader | tuple[str, str, int], recipe: str, reason: str,
                      decided_by: str = "not_inspected") -> Verdict:
        """A part that never got a model's verdict, FAIL with its reason: the one way to build one.

        `part` is its frame header, or its (camera, stream, seq) when it was never announced (its
        messages were lost: no capture time is known). `decided_by` is `not_inspected` or `timeout`. `recipe`
        is the line's; a header's own (the recipe in force at capture) comes first."""
        if not isinstance(part, FrameHeader):
            camera, stream, seq = part
            return cls(camera=camera, stream=stream, seq=seq, part_id=f"{camera}-{stream}-{seq}", final="FAIL",
                       decided_by=decided_by, reasons=[reason], recipe=recipe, t_decided_ns=now_ns())
        h = part
        return cls(
            camera=h.camera, stream=h.stream, seq=h.seq, part_id=h.part_id,
            final="FAIL", decided_by=decided_by, reasons=[reason], recipe=h.recipe or recipe,
            t_capture_ns=h.t_capture_ns, t_sent_ns=h.t_sent_ns,
            t_decided_ns=part_wall_ns(h.t_capture_ns, h.t_capture_mono_ns),
            t_capture_mono_ns=h.t_capture_mono_ns, truth=h.truth,
        )


_Item = TypeVar("_Item")


def _each(items: Sequence[_Item], verdict: Callable[[_Item], Verdict]) -> tuple[list[Verdict], list[VerdictError]]:
    """Each item's verdict, or what is wrong with it, named by its place in the batch."""
    good, errors = [], []
    for i, item in enumerate(items):
        try:
            good.append(verdict(item))
        except VerdictError as exc:
            errors.append(VerdictError(f"verdict batch: item {i}: {exc}", exc.identity))
    return good, errors


_VERDICT = msgspec.json.Decoder(Verdict)  # unknown fields are ignored: a newer sender stays readable
_VERDICTS = msgspec.json.Decoder(list[Verdict])
_RAW_ITEMS = msgspec.json.Decoder(list[msgspec.Raw])


def encode_verdict_batch(verdicts: Sequence[Verdict]) -> bytes:
    """A `verdict_batch` message body (infer -> record); `Verdict.many_from_bytes` reads it."""
    return orjson.dumps(verdicts, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


def encode_verdict_group(columns: tuple[str, ...], rows: list[tuple[Any, ...]], json_columns: tuple[str, ...],
                         commit_id: int, t_committed_ns: int) -> bytes:
    """A `verdicts` event: the rows of one group commit as the store has them, column-wise.

    `json_columns` are JSON texts in the rows (sent as text: record never re-parses them); the event is
    published once the group is committed.
    """
    return orjson.dumps({"commit_id": commit_id, "t_committed_ns": t_committed_ns,
                         "columns": columns, "json_columns": json_columns, "rows": rows})


def decode_verdict_group(raw: bytes, json_columns: bool = True) -> list[dict[str, Any]]:
    """One dict per verdict of a `verdicts` event, plus the commit's stage times (`t_committed_ns`,
    `record_ms`: decided -> committed; `event_ms`, committed -> published, is null: the event is built
    before it is sent). `store.rows.row_to_api` gives it the shape every reader shows.
    `json_columns=False` leaves the JSON columns (reasons, probs, truth) as text, for a reader that
    only counts verdicts.

    A malformed event raises MessageError (a ValueError) naming what is wrong.
    """
    group = load_json(raw, "verdicts event")
    try:
        columns, rows = group["columns"], group["rows"]
        parsed = group["json_columns"] if json_columns else ()
        stages: dict[str, Any] = {"t_committed_ns": int(group["t_committed_ns"]), "event_ms": None}
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
    except MessageError:
        raise
    except (KeyError, TypeError, ValueError, OverflowError) as exc:  # ValueError: a bad number or JSON column
        raise MessageError(f"verdicts event: {type(exc).__name__} {exc}") from None
    return out
