"""Every wire decoder fuzzed (hypothesis, bounded and derandomized): arbitrary bytes and valid JSON with one field
made wrong either decode to a message the receiving process can use or raise MessageError naming the problem,
never another exception; a valid message survives encode -> decode unchanged.

"Can use" is checked by doing with a decoded message what its receiver does next: record stores a verdict's
row and an alarm, applies an operator's action; a worker builds the part's verdict from its header; the plc
counts a `verdicts` event's rows. The end-to-end runs against real processes are in test_fuzz_processes.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pytest
import sqlite_utils
import zmq
from hypothesis import given
from hypothesis import strategies as st

from linewatch.config import parse_config
from linewatch.plc.state import LineState
from linewatch.store.rows import JSON_COLUMNS, ROW_COLUMNS, verdict_row, verdict_values
from linewatch.store.schema import open_writer
from linewatch.store.writer import ActionError, apply_action, insert_alarm
from linewatch.wire import (
    MAX_INT64,
    Alarm,
    CameraCommand,
    CameraReply,
    Endpoints,
    FrameHeader,
    MessageError,
    OperatorAction,
    SlotRelease,
    Verdict,
    VerdictError,
    decode_frame,
    decode_verdict_group,
    encode_frame,
    encode_verdict_batch,
    encode_verdict_group,
    peek_identity,
)
from linewatch.wire.frame_ring import FrameReader, FrameRing
from tests.fuzz_strategies import JSON_VALUES, NASTY, documents, fragment, fuzz, mutated, nested

T0 = 1_780_000_000_000_000_000
HEADER = FrameHeader("cam0", "s1", 3, "p3", T0, T0 + 5, 4, 2, 1, "uint8", "Mono8", {"label": "good"},
                     t_capture_mono_ns=7_000_000)
VERDICT = Verdict("cam0", "s1", 3, "p3", "FAIL", "model", ["score 0.9"], "default", "ab12", "ref", "cd34", "defect",
                  0.9, {"good": 0.1, "defect": 0.9}, T0, T0 + 5, T0 + 9, T0 + 20, 7_000_000,
                  {"queue": 0.1, "inference": 1.5}, "infer[0]", {"label": "defect"})


def _base(message: Any) -> dict[str, Any]:
    return dict(orjson.loads(message.to_bytes()))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[sqlite_utils.Database]:
    db = open_writer(tmp_path_factory.mktemp("fuzz-store"))
    yield db
    db.close()


@pytest.fixture(scope="module")
def plc_state(tmp_path_factory: pytest.TempPathFactory) -> LineState:
    return LineState(parse_config({"data_dir": str(tmp_path_factory.mktemp("fuzz-plc"))}))


# -- what each receiver does next with a decoded message --

def _storable(values: tuple[Any, ...]) -> None:
    """SQLite keeps signed 64-bit integers: a bigger one would stop record's group commit."""
    for value in values:
        assert not isinstance(value, int) or -(2**63) <= value <= MAX_INT64, values


def _use_header(h: FrameHeader, _: sqlite_utils.Database) -> None:
    assert FrameHeader.from_bytes(h.to_bytes()) == h
    assert h.nbytes >= 1 and len(h.shape) in (2, 3)
    for v in (Verdict.not_inspected(h, "default", "no verdict"),  # record's timeout row for an announced part
              Verdict("c", "s", 0, "p", "PASS", "model", truth=h.truth)):  # a worker's verdict carries the truth
        assert Verdict.from_bytes(v.to_bytes()) == v
        _storable(verdict_values(v))


def _use_verdict(v: Verdict, _: sqlite_utils.Database) -> None:
    assert Verdict.from_bytes(v.to_bytes()) == v
    _storable(verdict_values(v, "LOT-1", "day"))


def _use_verdicts(got: tuple[list[Verdict], list[VerdictError]], db: sqlite_utils.Database) -> None:
    verdicts, errors = got
    assert Verdict.many_from_bytes(encode_verdict_batch(verdicts)) == (verdicts, [])
    for v in verdicts:
        _use_verdict(v, db)
    for error in errors:  # each bad item is named and, where its part is readable, traced to it
        assert isinstance(error, VerdictError) and str(error).startswith("verdict batch: item ")
        assert error.identity is None or 0 <= error.identity[2] <= MAX_INT64


def _use_frame(frame: tuple[FrameHeader, np.ndarray], db: sqlite_utils.Database) -> None:
    h, pixels = frame
    assert pixels.shape == h.shape and pixels.nbytes == h.nbytes
    _use_header(h, db)


def _use_alarm(a: Alarm, db: sqlite_utils.Database) -> None:
    assert Alarm.from_bytes(a.to_bytes()) == a
    assert insert_alarm(db, a) > 0


def _use_action(a: OperatorAction, db: sqlite_utils.Database) -> None:
    assert OperatorAction.from_bytes(a.to_bytes()) == a
    with suppress(ActionError):  # refused by the store, naming why (record counts it as a rejected action)
        apply_action(db, a)


def _round_trip(message: Any, _: sqlite_utils.Database) -> None:
    assert type(message).from_bytes(message.to_bytes()) == message


@dataclass(frozen=True)
class Decoder:
    name: str
    decode: Callable[[bytes], Any]
    documents: st.SearchStrategy[bytes]
    prefixes: tuple[str, ...]
    use: Callable[[Any, sqlite_utils.Database], None]


def _frame(raw: bytes) -> tuple[FrameHeader, np.ndarray]:
    return decode_frame([raw, bytes(HEADER.nbytes)])


def _batches() -> st.SearchStrategy[bytes]:
    items = st.lists(documents(_base(VERDICT)), max_size=4)
    return st.one_of(items.map(lambda docs: b"[" + b",".join(docs) + b"]"), NASTY, st.binary(max_size=300))


_GROUP = orjson.loads(encode_verdict_group(ROW_COLUMNS, [tuple(verdict_row(VERDICT, T0 + 30).values())],
                                           JSON_COLUMNS, 7, T0 + 31))
_ACTIONS = [OperatorAction("set_lot", "ann", "r1", {"lot": "LOT-1"}, T0),
            OperatorAction("review", "ann", "r2", {"inspection_id": 1, "decision": "PASS", "label": None,
                                                  "note": "ok"}, T0),
            OperatorAction("ack_alarm", "plc", "r3", {"alarm_id": 1}, T0)]
DECODERS = [
    Decoder("frame header", FrameHeader.from_bytes, documents(_base(HEADER)), ("frame header: ",), _use_header),
    Decoder("slot header", FrameHeader.from_bytes, documents(_base(HEADER) | {"slot": 1, "gen": 4}),
            ("frame header: ",), _use_header),
    Decoder("frame", _frame, documents(_base(HEADER)), ("frame header: ", "frame message: "), _use_frame),
    Decoder("verdict", Verdict.from_bytes, documents(_base(VERDICT)), ("verdict: ",), _use_verdict),
    Decoder("verdict batch", Verdict.many_from_bytes, _batches(), ("verdict batch: ",), _use_verdicts),
    Decoder("alarm", Alarm.from_bytes, documents(_base(Alarm("infer[0]", "model_error", "boom", "critical", T0))),
            ("alarm: ",), _use_alarm),
    *(Decoder(f"action {a.action}", OperatorAction.from_bytes, documents(_base(a)), ("action: ",), _use_action)
      for a in _ACTIONS),
    Decoder("camera command", CameraCommand.from_bytes, documents(_base(CameraCommand("trigger", "part-1"))),
            ("camera command: ",), _round_trip),
    Decoder("camera reply", CameraReply.from_bytes, documents(_base(CameraReply(False, 4, "p4", "camera lost"))),
            ("camera reply: ",), _round_trip),
    Decoder("slot release", SlotRelease.from_bytes, documents(_base(SlotRelease("cam0", "s1", [(0, 1), (3, 9)]))),
            ("slot release: ",), _round_trip),
]


BY_NAME = {d.name: d for d in DECODERS}


def _decoded_or_refused(decoder: Decoder, raw: bytes) -> Any | None:
    """The message, or None when refused with MessageError naming the problem; any other exception fails."""
    try:
        return decoder.decode(raw)
    except MessageError as exc:
        text = str(exc)
        assert text.startswith(decoder.prefixes), text
        assert len(text) > max(map(len, decoder.prefixes)) + 5, text  # says what is wrong, not just where
        return None


@pytest.mark.parametrize("name", list(BY_NAME))
@fuzz(300)
@given(data=st.data())
def test_a_decoder_refuses_wrong_json_by_name_or_returns_a_usable_message(
        name: str, store: sqlite_utils.Database, data: st.DataObject) -> None:
    decoder = BY_NAME[name]
    raw = data.draw(decoder.documents, label="raw")
    message = _decoded_or_refused(decoder, raw)
    if message is not None:
        decoder.use(message, store)


@pytest.mark.parametrize(("name", "sample"), [
    ("frame header", HEADER), ("verdict", VERDICT), ("alarm", Alarm("a", "b", "c", "info", 1)),
    ("action review", _ACTIONS[1]), ("slot release", SlotRelease("cam0", "s1", [(0, 1)]))])
@fuzz(200)
@given(data=st.data())
def test_a_refused_field_is_named(name: str, sample: Any, data: st.DataObject) -> None:
    """One field given a wrong value, deleted or doubled: the error names that field, or says the text is
    not JSON (or which rule between fields it breaks)."""
    raw, field = data.draw(mutated(_base(sample)), label="mutated")
    try:
        BY_NAME[name].decode(raw)
    except MessageError as exc:
        text = str(exc)
        named = (f"`$.{field}" in text or f"`{field}`" in text or f"'{field}'" in text
                 or "not valid JSON" in text or "unsupported version" in text or "slot and gen" in text)
        assert named, (field, text)


@fuzz(300)
@given(raw=st.one_of(documents(_GROUP), st.binary(max_size=200)), json_columns=st.booleans())
def test_a_verdicts_event_is_refused_by_name_or_gives_rows_the_plc_can_count(
        raw: bytes, json_columns: bool, plc_state: LineState) -> None:
    try:
        rows = decode_verdict_group(raw, json_columns=json_columns)
    except MessageError as exc:
        assert str(exc).startswith("verdicts event: ") and len(str(exc)) > 22, str(exc)
        return
    for row in rows:
        assert isinstance(row, dict)
        with suppress(ValueError, KeyError, TypeError):  # the plc's guard: such a row is logged and counted
            plc_state.on_verdict(row)


@fuzz(300)
@given(raw=st.one_of(documents(_base(HEADER)), documents(_base(VERDICT)), NASTY, st.binary(max_size=200)))
def test_peek_identity_never_raises_and_gives_a_storable_identity(raw: bytes) -> None:
    ident = peek_identity(raw)
    if ident is not None:
        camera, stream, seq = ident
        assert isinstance(camera, str) and isinstance(stream, str) and 0 <= seq <= MAX_INT64


@pytest.fixture(scope="module")
def ring(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FrameRing, FrameReader]]:
    run_dir = tmp_path_factory.mktemp("fuzz-ring")
    ctx: zmq.Context[Any] = zmq.Context()
    ring = FrameRing(run_dir, "cam0", "s1", slots=4, slot_bytes=64)
    for _ in range(3):
        ring.place(np.zeros(8, np.uint8))
    reader = FrameReader(ctx, Endpoints(run_dir))
    yield ring, reader
    reader.close()
    ring.close()
    ctx.term()


_SLOT_HEADERS = st.fixed_dictionaries(
    {"camera": st.sampled_from(["cam0", "cam1", "cam\x000", "../cam0", "cam0/x", ""]),
     "stream": st.sampled_from(["s1", "s2", "s\x001", "../../s1"]),
     "slot": st.integers(-1, 6) | st.just(2**64), "gen": st.integers(-1, 3) | st.just(2**64),
     "width": st.integers(0, 80), "height": st.integers(0, 3), "channels": st.integers(0, 4),
     "dtype": st.sampled_from(["uint8", "uint16", "float32"]), "v": st.sampled_from([1, 2, 3])})


@fuzz(300)
@given(fields=_SLOT_HEADERS)
def test_a_ring_slot_header_is_refused_by_name_or_read_within_its_slot(
        fields: dict[str, Any], ring: tuple[FrameRing, FrameReader]) -> None:
    """A worker given a shared-memory frame header: a slot, generation, size or ring that does not fit is
    refused naming the field; a header that fits reads the pixels inside its slot."""
    frames, reader = ring
    raw = fragment(_base(HEADER) | fields)
    try:
        header, pixels = reader.decode([raw])
    except MessageError as exc:
        assert str(exc).startswith(("frame header: ", "frame message: ", "frame ring: ")), str(exc)
        return
    assert header.slot is not None and header.slot < frames.slots and pixels.nbytes == header.nbytes <= 64
    reader.finish(header)  # None, or why the slot's pixels cannot be trusted
    reader._done.clear()  # no release is sent: the ring's slots stay as placed


_TEXT = st.text(max_size=12)
_COUNT = st.integers(0, MAX_INT64)
_FLOAT = st.floats(allow_nan=False, allow_infinity=False)
_TRUTH = st.none() | st.dictionaries(_TEXT, JSON_VALUES.filter(lambda v: _fits_int64(v)), max_size=3)


def _fits_int64(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | list | dict):
        return True
    if isinstance(value, int):
        return -(2**63) <= value <= MAX_INT64
    return all(_fits_int64(v) for v in (value.values() if isinstance(value, dict) else value))


HEADERS = st.builds(
    FrameHeader, camera=_TEXT, stream=_TEXT, seq=_COUNT, part_id=_TEXT, t_capture_ns=_COUNT, t_sent_ns=_COUNT,
    width=st.integers(1, 64), height=st.integers(1, 64), channels=st.integers(1, 4),
    dtype=st.sampled_from(["uint8", "uint16"]), pixel_format=_TEXT, truth=_TRUTH, v=st.just(2),
    device_frame_id=st.none() | st.integers(0, 2**64 - 1), device_timestamp_ns=st.none() | _COUNT,
    t_capture_mono_ns=st.none() | _COUNT)
VERDICTS = st.builds(
    Verdict, camera=_TEXT, stream=_TEXT, seq=_COUNT, part_id=_TEXT, final=st.sampled_from(["PASS", "FAIL", "REVIEW"]),
    decided_by=_TEXT, reasons=st.lists(_TEXT, max_size=3), recipe=_TEXT, model_hash=st.none() | _TEXT,
    label=st.none() | _TEXT, score=st.none() | _FLOAT, probs=st.none() | st.dictionaries(_TEXT, _FLOAT, max_size=3),
    t_capture_ns=_COUNT, t_sent_ns=_COUNT, t_received_ns=_COUNT, t_decided_ns=_COUNT,
    t_capture_mono_ns=st.none() | _COUNT, timings_ms=st.dictionaries(_TEXT, _FLOAT, max_size=3), worker=_TEXT,
    truth=_TRUTH, image=st.none() | _TEXT)
MESSAGES = st.one_of(
    HEADERS, VERDICTS,
    st.builds(Alarm, source=_TEXT, kind=_TEXT, message=_TEXT, severity=st.sampled_from(["info", "warning",
                                                                                        "critical"]), t_ns=_COUNT),
    st.builds(OperatorAction, action=st.just("ack_alarm"), actor=_TEXT, request_id=_TEXT,
              detail=st.fixed_dictionaries({"alarm_id": _COUNT}), t_ns=_COUNT),
    st.builds(OperatorAction, action=st.just("review"), actor=_TEXT, request_id=_TEXT,
              detail=st.fixed_dictionaries({"inspection_id": _COUNT, "decision": st.sampled_from(["PASS", "FAIL"]),
                                            "label": st.none() | _TEXT, "note": st.none() | _TEXT}), t_ns=_COUNT),
    st.builds(CameraCommand, cmd=st.just("trigger"), part_id=st.none() | st.text(min_size=1, max_size=128)),
    st.builds(CameraReply, ok=st.booleans(), seq=st.none() | _COUNT, part_id=st.none() | _TEXT,
              error=st.none() | _TEXT),
    st.builds(SlotRelease, camera=_TEXT, stream=_TEXT, slots=st.lists(st.tuples(_COUNT, _COUNT), max_size=4)),
)


@fuzz(400)
@given(message=MESSAGES)
def test_a_valid_message_survives_encode_then_decode(message: Any) -> None:
    assert type(message).from_bytes(message.to_bytes()) == message


@fuzz(100)
@given(header=HEADERS, data=st.data())
def test_a_valid_frame_and_a_verdict_batch_survive_encode_then_decode(header: FrameHeader, data: st.DataObject) -> None:
    dtype = np.dtype(header.dtype)
    pixels = np.frombuffer(data.draw(st.binary(min_size=header.nbytes, max_size=header.nbytes)), dtype)
    got_header, got_pixels = decode_frame([bytes(part) for part in encode_frame(header, pixels.reshape(header.shape))])
    assert got_header == header and got_pixels.tobytes() == pixels.tobytes()
    batch = data.draw(st.lists(VERDICTS, max_size=4))
    assert Verdict.many_from_bytes(encode_verdict_batch(batch)) == (batch, [])


@fuzz(100)
@given(verdicts=st.lists(VERDICTS, min_size=1, max_size=3), commit_id=_COUNT, t_committed=_COUNT)
def test_a_verdicts_event_gives_back_the_rows_of_its_group(verdicts: list[Verdict], commit_id: int,
                                                           t_committed: int) -> None:
    rows = [verdict_row(v, t_committed) for v in verdicts]
    got = decode_verdict_group(encode_verdict_group(ROW_COLUMNS, [tuple(r.values()) for r in rows], JSON_COLUMNS,
                                                    commit_id, t_committed))
    for row, event in zip(rows, got, strict=True):
        for name in ROW_COLUMNS:
            want = json.loads(row[name]) if name in JSON_COLUMNS and row[name] else row[name]
            assert event[name] == want, name
        assert event["t_committed_ns"] == t_committed


@fuzz(200)
@given(header=HEADERS)
def test_any_valid_header_gives_its_part_a_storable_verdict(header: FrameHeader, store: sqlite_utils.Database) -> None:
    """Boundary times included: a part's verdict built from its header must fit the store's 64-bit columns."""
    _use_header(header, store)


def _with(message: Any, **fields: bytes) -> bytes:
    """`message` as JSON with `fields` given as raw JSON text (text a JSON encoder would not write)."""
    doc = {k: fragment(v) for k, v in _base(message).items()} | fields
    return b"{" + b",".join(fragment(k) + b":" + v for k, v in doc.items()) + b"}"


@pytest.mark.parametrize(("decode", "raw", "text"), [
    (FrameHeader.from_bytes, _with(HEADER, camera=b'"\xffcam"'), "frame header: not valid JSON ('utf-8' codec"),
    (FrameHeader.from_bytes, _with(HEADER, truth=b'{"a":' + nested(5000, "[") + b"}"), "nested too deeply"),
    (FrameHeader.from_bytes, _with(HEADER, truth=b'{"n":18446744073709551616}'),
     "frame header: field 'truth' cannot be stored (Integer exceeds 64-bit range)"),
    (FrameHeader.from_bytes, _with(HEADER, truth=b'{"a":' + nested(300, "[") + b"}"),
     "frame header: field 'truth' cannot be stored (Recursion limit reached)"),
    (Verdict.from_bytes, _with(VERDICT, label=b'"\xed\xa0\x80"'), "verdict: not valid JSON"),
    (Verdict.from_bytes, _with(VERDICT, truth=b'{"n":-9223372036854775809}'), "verdict: field 'truth' cannot be"),
    (OperatorAction.from_bytes, _with(_ACTIONS[1], detail=b'{"inspection_id":18446744073709551616,"decision":"PASS"}'),
     "action: Expected `int` <= 9223372036854775807 - at `$.detail.inspection_id`"),
    (OperatorAction.from_bytes, _with(_ACTIONS[2], detail=b'{"alarm_id":[1]}'),
     "action: Expected `int`, got `array` - at `$.detail.alarm_id`"),
    (OperatorAction.from_bytes, _with(_ACTIONS[0], detail=b"{}"), "action: Object missing required field `lot`"),
    (Alarm.from_bytes, b'{"source":"\xc3"}', "alarm: not valid JSON"),
    (decode_verdict_group, fragment(_GROUP | {"t_committed_ns": "soon"}), "verdicts event: ValueError"),
    (decode_verdict_group, fragment(_GROUP | {"t_committed_ns": "9" * 400}), "verdicts event: OverflowError"),
])
def test_input_that_stopped_a_process_is_refused_naming_the_problem(decode: Callable[[bytes], Any], raw: bytes,
                                                                     text: str) -> None:
    """Each of these raised something other than MessageError (UnicodeDecodeError, RecursionError, or later,
    where the message was used: orjson's TypeError, SQLite's OverflowError) and stopped record or a worker."""
    with pytest.raises(MessageError) as refused:
        decode(raw)
    assert text in str(refused.value)


def test_a_batch_item_that_cannot_be_stored_fails_only_its_own_part() -> None:
    good, bad = _base(VERDICT), _base(VERDICT) | {"seq": 4, "truth": {"n": 2**64}}
    verdicts, errors = Verdict.many_from_bytes(b"[" + fragment(good) + b"," + fragment(bad) + b"]")
    assert [v.seq for v in verdicts] == [3]
    assert [(str(e), e.identity) for e in errors] == [
        ("verdict batch: item 1: verdict: field 'truth' cannot be stored (Integer exceeds 64-bit range)",
         ("cam0", "s1", 4))]


def test_peek_identity_of_deeply_nested_text_is_none_not_a_recursion_error() -> None:
    assert peek_identity(b'{"camera":"c","stream":"s","seq":1,"x":' + nested(100_000, "[") + b"}") is None


def test_a_part_s_wall_times_stay_within_what_the_store_holds() -> None:
    late = FrameHeader("c", "s", 0, "p", MAX_INT64, MAX_INT64, 1, 1, 1, "uint8", "Mono8", t_capture_mono_ns=0)
    early = FrameHeader("c", "s", 0, "p", 1, 1, 1, 1, 1, "uint8", "Mono8", t_capture_mono_ns=MAX_INT64)
    assert Verdict.not_inspected(late, "r", "x").t_decided_ns == MAX_INT64
    assert Verdict.not_inspected(early, "r", "x").t_decided_ns == 0
