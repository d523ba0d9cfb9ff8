"""The receiving processes fuzzed end to end: a real record child and a real infer worker are fed
hypothesis-generated malformed multipart messages (bounded, derandomized). Each stays alive, counts every
rejection in `linewatch_messages_rejected_total`, and every part a message names (readable camera, stream
and seq) ends with exactly one row (record) or one verdict (infer), however wrong the rest of it is.
A camera's control socket (acquire) answers every command, a refusal naming the problem.

What each message should give is worked out with the same decoders in this process (the oracle), and the
message's part gets a stream of its own, so its rows and verdicts are told apart from other examples'.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import zmq
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from linewatch.wire import (
    KIND_ACTION,
    KIND_ALARM,
    KIND_ANNOUNCE,
    KIND_VERDICT,
    KIND_VERDICT_BATCH,
    Alarm,
    CameraCommand,
    CameraReply,
    Endpoints,
    FrameHeader,
    MessageError,
    OperatorAction,
    Verdict,
    VerdictError,
    decode_frame,
    now_ns,
    peek_identity,
)
from tests import conftest
from tests.acquire_harness import AcquireRig
from tests.conftest import REFERENCE_MODEL, InferRig, db_rows, wait_for
from tests.fuzz_strategies import NASTY, documents, fuzz, mutated

Key = tuple[str, str, int]
_streams = itertools.count()


def rejected(run_dir: Path, process: str) -> float:
    """`linewatch_messages_rejected_total` of one process, all reasons, from the multiprocess metrics dir."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(run_dir / "metrics"))  # type: ignore[no-untyped-call]
    return sum(s.value for m in registry.collect() for s in m.samples
               if s.name == "linewatch_messages_rejected_total" and s.labels.get("process") == process)


def _doc(message: Any) -> dict[str, Any]:
    return dict(orjson.loads(message.to_bytes()))


# -- record --

def _record_bases(stream: str) -> dict[bytes, dict[str, Any]]:
    t = now_ns()
    return {KIND_VERDICT: _doc(Verdict("fz", stream, 0, "p0", "PASS", "model", t_capture_ns=t)),
            KIND_ANNOUNCE: _doc(FrameHeader("fz", stream, 0, "p0", t, t, 4, 4, 1, "uint8", "Mono8")),
            KIND_ALARM: _doc(Alarm("fuzz", "fuzz", "a fuzzed alarm", "info", t)),
            KIND_ACTION: _doc(OperatorAction("ack_alarm", "fuzz", f"r-{stream}", {"alarm_id": 10**12}, t))}


@st.composite
def record_messages(draw: st.DrawFn, stream: str) -> list[bytes]:
    """One message on record's inbound socket: mostly a known kind with a fuzzed body, sometimes a wrong kind
    or part count."""
    bases = _record_bases(stream)
    kind = draw(st.sampled_from([*bases, KIND_VERDICT_BATCH, KIND_VERDICT_BATCH, b"bogus", b""]))
    if kind == KIND_VERDICT_BATCH:
        items = [bases[KIND_VERDICT] | {"seq": seq} for seq in range(draw(st.integers(1, 3)))]
        body = b"[" + b",".join(draw(_body(item)) for item in items) + b"]"
        body = draw(st.sampled_from([body, body, body, draw(NASTY)]))
    else:
        body = draw(_body(bases.get(kind, bases[KIND_VERDICT])))
    if draw(st.integers(0, 9)) >= 2:
        return [kind, body]
    return draw(st.sampled_from([[kind], [kind, body, b""], [kind, body, b"x", b"y"], [kind, body, b"x", b"y", b"z"]]))


def _body(base: dict[str, Any]) -> st.SearchStrategy[bytes]:
    """Mostly `base` with one field made wrong (its part stays readable), else anything at all."""
    return st.one_of(mutated(base).map(lambda doc: doc[0]), mutated(base).map(lambda doc: doc[0]), documents(base))


def record_expects(parts: list[bytes]) -> tuple[int, set[Key]]:
    """What record should do with a message: (rejections it counts, parts that get a row)."""
    kind, n = parts[0], len(parts)
    if kind == KIND_VERDICT and n in (2, 4, 5):
        try:
            v = Verdict.from_bytes(parts[1])
        except VerdictError as exc:
            return 1, {exc.identity} if exc.identity else set()
        return 0, {(v.camera, v.stream, v.seq)}
    if kind == KIND_VERDICT_BATCH and n == 2:
        try:
            good, errors = Verdict.many_from_bytes(parts[1])
        except MessageError:
            return 1, set()
        return len(errors), {(v.camera, v.stream, v.seq) for v in good} | {e.identity for e in errors if e.identity}
    if kind == KIND_ANNOUNCE and n == 2:
        try:
            h = FrameHeader.from_bytes(parts[1])
        except MessageError:
            return 1, set()
        return 0, {(h.camera, h.stream, h.seq)}  # no verdict follows: its deadline fails it
    if kind == KIND_ALARM and n == 2:
        try:
            Alarm.from_bytes(parts[1])
        except MessageError:
            return 1, set()
        return 0, set()
    return 1, set()  # an action: malformed, or acknowledging an alarm that does not exist; anything else


def _rows(data_dir: Path, key: Key) -> int:
    rows = db_rows(data_dir, "SELECT count(*) AS n FROM inspections WHERE camera = ? AND stream = ? AND seq = ?", key)
    return int(rows[0]["n"]) if rows else 0


@pytest.fixture(scope="module")
def rec(tmp_path_factory: pytest.TempPathFactory) -> Iterator[conftest.RecordRig]:
    r = conftest.RecordRig(tmp_path_factory.mktemp("fuzz-record"), {"deadline_ms": 300})
    yield r
    r.close()
    r.ctx.term()


def test_record_counts_every_malformed_message_and_gives_each_named_part_one_row(rec: conftest.RecordRig) -> None:
    data_dir, run_dir = rec.cfg.data_dir, rec.cfg.run_dir
    named: set[Key] = set()

    @fuzz(150)
    @given(data=st.data())
    def one_message(data: st.DataObject) -> None:
        parts = data.draw(record_messages(f"fz-{next(_streams)}"), label="parts")
        count, keys = record_expects(parts)
        named.update(keys)
        before = rejected(run_dir, "record")
        rec.push.send_multipart(parts)
        end = time.monotonic() + 10
        while not (rejected(run_dir, "record") - before == count and all(_rows(data_dir, k) for k in keys)):
            assert rec.proc.poll() is None, "record died"
            assert time.monotonic() < end, (f"{rejected(run_dir, 'record') - before} rejection(s) counted, "
                                            f"{count} expected; rows {[_rows(data_dir, k) for k in keys]} for {keys}")
            time.sleep(0.02)

    one_message()
    time.sleep(0.5)  # past the deadline: a part failed by its deadline and then given a verdict keeps one row
    assert {key: _rows(data_dir, key) for key in named} == dict.fromkeys(named, 1)
    rec.push.send_multipart([KIND_VERDICT, Verdict("fz", "after", 0, "p0", "PASS", "model").to_bytes()])
    wait_for(lambda: _rows(data_dir, ("fz", "after", 0)), 5, "a good verdict after the fuzzing")
    assert rec.proc.poll() is None


# -- infer --

def _frame_base(stream: str) -> dict[str, Any]:
    t = now_ns()
    return _doc(FrameHeader("fz", stream, 0, "p0", t, t, 16, 16, 1, "uint8", "Mono8", {"label": "good"}))


@st.composite
def frame_messages(draw: st.DrawFn, stream: str) -> list[bytes]:
    """One message on a worker's frame socket: a header with a fuzzed field and its pixels, a valid frame of
    an unusual size or pixel format, or a wrong number of parts."""
    base = _frame_base(stream)
    how = draw(st.sampled_from(["fuzzed", "fuzzed", "odd", "parts"]))
    if how == "odd":  # valid, but not what the model was trained on
        channels, dtype = draw(st.integers(1, 5)), draw(st.sampled_from(["uint8", "uint16"]))
        width, height = draw(st.integers(1, 40)), draw(st.integers(1, 40))
        header = base | {"width": width, "height": height, "channels": channels, "dtype": dtype}
        size = width * height * channels * np.dtype(dtype).itemsize
        return [orjson.dumps(header), draw(st.binary(min_size=size, max_size=size))]
    head = draw(_body(base))
    if how == "parts":
        return draw(st.sampled_from([[head], [head, bytes(256), b"extra"], [head, b"", b"", b""]]))
    return [head, draw(st.sampled_from([bytes(256), bytes(255), b"", bytes(512)]))]


def infer_expects(parts: list[bytes]) -> tuple[int, set[Key]]:
    """(rejections the worker counts, parts that get a verdict): a frame it can read gets the model's (or a
    rule's) verdict; one it cannot is rejected, and a not-inspected FAIL where its header names the part."""
    try:
        if len(parts) == 1:  # a ring slot header: no ring exists for these streams
            raise MessageError("no ring")
        h, _ = decode_frame(parts)
    except MessageError:
        ident = peek_identity(parts[0])
        return 1, {ident} if ident else set()
    return 0, {(h.camera, h.stream, h.seq)}


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InferRig]:
    rig = InferRig(tmp_path_factory.mktemp("fuzz-infer"), REFERENCE_MODEL, record={"live_view_hz": 0})
    yield rig
    rig.close()


def _verdicts(rig: InferRig, seen: Counter[Key], timeout_ms: int) -> None:
    """Take what the worker sent to record, counting each verdict's part."""
    while rig.record.poll(timeout_ms):
        timeout_ms = 0
        parts = rig.record.recv_multipart()
        if parts[0] == KIND_VERDICT:
            verdicts = [Verdict.from_bytes(parts[1])]
        elif parts[0] == KIND_VERDICT_BATCH:
            verdicts, errors = Verdict.many_from_bytes(parts[1])
            assert not errors, errors
        else:
            assert parts[0] == KIND_ALARM, parts[0]
            continue
        seen.update((v.camera, v.stream, v.seq) for v in verdicts)


def test_a_worker_counts_every_malformed_frame_and_gives_each_named_part_one_verdict(worker: InferRig) -> None:
    run_dir = worker.cfg.run_dir
    seen: Counter[Key] = Counter()
    named: set[Key] = set()

    @fuzz(120)
    @given(data=st.data())
    def one_message(data: st.DataObject) -> None:
        parts = data.draw(frame_messages(f"fz-{next(_streams)}"), label="parts")
        count, keys = infer_expects(parts)
        named.update(keys)
        before = rejected(run_dir, "infer")
        worker.frames.send_multipart(parts)
        end = time.monotonic() + 10
        while not (all(seen[k] for k in keys) and rejected(run_dir, "infer") - before == count):
            assert worker.proc.poll() is None, "the worker died"
            assert time.monotonic() < end, (f"{rejected(run_dir, 'infer') - before} rejection(s) counted, {count} "
                                            f"expected; verdicts {[seen[k] for k in keys]} for {keys}")
            _verdicts(worker, seen, 20)

    one_message()
    _verdicts(worker, seen, 300)
    assert {key: seen[key] for key in named} == dict.fromkeys(named, 1)
    assert set(seen) == named, "a verdict for a part no message named"
    worker.send_part(0)
    assert (worker.next_verdict().stream, worker.proc.poll()) == ("test", None)


def test_record_expects_a_row_for_a_verdict_whose_part_is_readable() -> None:
    """The oracle itself: a verdict with a wrong `final` still names its part; a non-list batch names none."""
    bad = orjson.dumps(_record_bases("s")[KIND_VERDICT] | {"final": "MAYBE"})
    assert record_expects([KIND_VERDICT, bad]) == (1, {("fz", "s", 0)})
    assert record_expects([KIND_VERDICT_BATCH, b'{"camera": "fz"}']) == (1, set())
    assert infer_expects([orjson.dumps(_frame_base("s") | {"width": 0}), bytes(256)]) == (1, {("fz", "s", 0)})


# -- acquire's control socket --

@pytest.fixture(scope="module")
def camera(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AcquireRig]:
    rig = AcquireRig(tmp_path_factory.mktemp("fuzz-acquire"), {"name": "cam0", "trigger": "software"}).start()
    socket_file = Path(Endpoints(rig.cfg.run_dir).control("cam0").removeprefix("ipc://"))
    wait_for(socket_file.exists, 30, "acquire's control socket")
    yield rig
    rig.close()


def _refusals(reason: str) -> float:
    return REGISTRY.get_sample_value("linewatch_messages_rejected_total",
                                     {"process": "acquire", "reason": reason}) or 0.0


def test_a_camera_answers_every_command_and_counts_each_one_it_refuses(camera: AcquireRig) -> None:
    endpoint = Endpoints(camera.cfg.run_dir).control("cam0")
    base = _doc(CameraCommand("trigger", "part-1"))

    @fuzz(100)
    @given(parts=st.lists(st.one_of(_body(base), st.binary(max_size=40)), min_size=1, max_size=3))
    def one_command(parts: list[bytes]) -> None:
        try:
            CameraCommand.from_bytes(parts[0])
            refused = len(parts) != 1
        except MessageError:
            refused = True
        before = _refusals("camera command")
        req = camera.ctx.socket(zmq.REQ)
        req.setsockopt(zmq.LINGER, 0)
        req.connect(endpoint)
        try:
            req.send_multipart(parts)
            assert req.poll(5000), f"no reply to {parts}"
            reply = CameraReply.from_bytes(req.recv())
        finally:
            req.close()
        assert camera.thread.is_alive(), "acquire died"
        if refused:
            assert not reply.ok and reply.error and reply.error.startswith("camera command: "), reply
        else:
            assert reply.ok and reply.seq is not None, reply
        assert _refusals("camera command") - before == refused
        camera.pump(0.01)  # take the triggered frames, as a worker and record would

    one_command()
