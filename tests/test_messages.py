"""The frame and verdict contracts: round trips, and a narrow error naming the field for bad input."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from linewatch.wire import (
    FrameHeader,
    MessageError,
    Verdict,
    decode_frame,
    encode_frame,
    encode_verdict_batch,
    peek_identity,
)


def _header(**kw: object) -> FrameHeader:
    base = dict(camera="cam0", stream="s", seq=3, part_id="p3", t_capture_ns=1, t_sent_ns=2, width=6, height=4,
                channels=1, dtype="uint8", pixel_format="Mono8", truth={"label": "good"})
    return FrameHeader(**{**base, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize(("channels", "dtype"), [(1, "uint8"), (3, "uint8"), (1, "uint16")])
def test_frame_round_trip_without_copy(channels: int, dtype: str) -> None:
    h = _header(channels=channels, dtype=dtype)
    px = (np.arange(h.nbytes // np.dtype(dtype).itemsize) % 250).astype(dtype).reshape(h.shape)
    parts = encode_frame(h, px)
    assert isinstance(parts[1], memoryview)
    got_h, got_px = decode_frame([parts[0], bytes(parts[1])])
    assert got_h == h
    np.testing.assert_array_equal(got_px, px)


def _changed(**fields: object) -> bytes:
    return json.dumps({**json.loads(_header().to_bytes()), **fields}).encode()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "Expected `object`, got `array`"),
        (json.dumps({**json.loads(_header().to_bytes()), "v": 9}).encode(), "unsupported version 9"),
        (json.dumps({k: v for k, v in json.loads(_header().to_bytes()).items() if k != "seq"}).encode(),
         "missing required field `seq`"),
        (_changed(width="6"), "Expected `int`, got `str` - at `$.width`"),
        (_changed(seq=True), "Expected `int`, got `bool` - at `$.seq`"),
        (_changed(height=0), "Expected `int` >= 1 - at `$.height`"),
        (_changed(dtype="float32"), "Invalid enum value 'float32' - at `$.dtype`"),
    ],
)
def test_bad_header_names_the_problem(raw: bytes, message: str) -> None:
    with pytest.raises(MessageError, match=re.escape(message)):
        FrameHeader.from_bytes(raw)


def test_frame_part_count_and_size_checked() -> None:
    h = _header()
    with pytest.raises(MessageError, match="expected 2 parts"):
        decode_frame([h.to_bytes()])
    with pytest.raises(MessageError, match="pixel buffer has 5 bytes, header 6x4x1 uint8 needs 24"):
        decode_frame([h.to_bytes(), b"12345"])


def test_peek_identity_traces_a_broken_frame_to_its_part() -> None:
    assert peek_identity(b'{"camera": "c", "stream": "s", "seq": 4, "width": -1}') == ("c", "s", 4)
    assert peek_identity(b'{"camera": "c"}') is None
    assert peek_identity(b"\x00") is None


def test_verdict_round_trip_and_validation() -> None:
    v = Verdict("cam0", "s", 1, "p1", "REVIEW", "rule:confidence_band", ["why"], probs={"good": 0.5, "defect": 0.5})
    assert Verdict.from_bytes(v.to_bytes()) == v
    with pytest.raises(MessageError, match=re.escape("Invalid enum value 'MAYBE' - at `$.final`")):
        Verdict.from_bytes(json.dumps({**json.loads(v.to_bytes()), "final": "MAYBE"}).encode())
    # a field only a newer sender knows is ignored, so a rolling upgrade never loses verdicts
    assert Verdict.from_bytes(json.dumps({**json.loads(v.to_bytes()), "extra": 1}).encode()) == v


def test_not_inspected_is_a_fail_with_its_reason() -> None:
    v = Verdict.not_inspected(_header(), "default", "frame queue full")
    assert (v.final, v.decided_by, v.reasons, v.seq) == ("FAIL", "not_inspected", ["frame queue full"], 3)


def _verdict_json(**changes: object) -> bytes:
    v = Verdict("cam0", "s", 1, "p1", "PASS", "model", ["why"], probs={"good": 0.9, "defect": 0.1},
                timings_ms={"queue": 0.1, "inference": 1.5})
    d = json.loads(v.to_bytes())
    for name, value in changes.items():
        if value is _DROP:
            del d[name]
        else:
            d[name] = value
    return json.dumps(d).encode()


_DROP = object()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"score": "0.3"}, "got `str` - at `\\$.score`"),
        ({"seq": True}, "Expected `int`, got `bool` - at `\\$.seq`"),
        ({"t_decided_ns": 1.5}, "Expected `int`, got `float` - at `\\$.t_decided_ns`"),
        ({"probs": [0.5]}, "got `array` - at `\\$.probs`"),
        ({"reasons": ["ok", 3]}, "Expected `str`, got `int` - at `\\$.reasons\\[1\\]`"),
        ({"timings_ms": {"queue": "slow"}}, "Expected `float`, got `str` - at `\\$.timings_ms"),
        ({"probs": {"good": None}}, "Expected `float`, got `null` - at `\\$.probs"),
        ({"camera": _DROP}, "missing required field `camera`"),
        ({"final": "MAYBE"}, "Invalid enum value 'MAYBE' - at `\\$.final`"),
        ({"seq": -1}, "Expected `int` >= 0 - at `\\$.seq`"),
        ({"t_capture_ns": 2**63}, "Expected `int` <= 9223372036854775807 - at `\\$.t_capture_ns`"),
    ],
)
def test_malformed_verdict_names_the_field(changes: dict[str, object], message: str) -> None:
    Verdict.from_bytes(_verdict_json())  # a good verdict of the same layout first: no check is skipped after it
    with pytest.raises(MessageError, match=message):
        Verdict.from_bytes(_verdict_json(**changes))


def test_verdict_fields_out_of_order_or_partial_decode_the_same() -> None:
    v = Verdict.from_bytes(_verdict_json())
    d = json.loads(v.to_bytes())
    assert Verdict.from_bytes(json.dumps(dict(reversed(list(d.items())))).encode()) == v
    assert Verdict.from_bytes(b'{"camera":"c","stream":"s","seq":0,"part_id":"p","final":"FAIL","decided_by":"timeout"}'
                              ) == Verdict("c", "s", 0, "p", "FAIL", "timeout")


def test_verdict_with_numpy_numbers_serialises() -> None:
    v = Verdict("cam0", "s", 1, "p1", "FAIL", "model", score=np.float32(0.75),  # type: ignore[arg-type]
                probs={"good": np.float64(0.25), "defect": np.float32(0.75)})  # type: ignore[dict-item]
    got = Verdict.from_bytes(v.to_bytes())
    assert got.score == 0.75 and got.probs == {"good": 0.25, "defect": 0.75}


def test_verdict_batch_keeps_the_good_items_and_names_the_bad_ones() -> None:
    good = [Verdict("cam0", "s", seq, f"p{seq}", "PASS", "model", probs={"good": 0.9, "defect": 0.1})
            for seq in range(3)]
    assert Verdict.many_from_bytes(encode_verdict_batch(good)) == (good, [])
    items = [json.loads(v.to_bytes()) for v in good]
    items[1]["seq"] = -4
    items.insert(2, "not a verdict")
    items[0]["final"] = "MAYBE"
    verdicts, errors = Verdict.many_from_bytes(json.dumps(items).encode())
    assert [v.seq for v in verdicts] == [2]
    assert [(str(e), e.identity) for e in errors] == [
        ("verdict batch: item 0: verdict: Invalid enum value 'MAYBE' - at `$.final`", ("cam0", "s", 0)),
        ("verdict batch: item 1: verdict: Expected `int` >= 0 - at `$.seq`", None),  # no part to name
        ("verdict batch: item 2: verdict: Expected `object`, got `str`", None)]
    for raw, problem in ((b"[1,", "not valid JSON"), (b'{"seq": 1}', "Expected `array`, got `object`")):
        with pytest.raises(MessageError, match=problem):
            Verdict.many_from_bytes(raw)
