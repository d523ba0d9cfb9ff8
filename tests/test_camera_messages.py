"""Camera additions to the wire: optional device fields in the frame header, control messages."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from linewatch.wire import Alarm, CameraCommand, CameraReply, FrameHeader, MessageError, OperatorAction


def _header_dict(**kw: object) -> dict[str, object]:
    return {"v": 1, "camera": "c", "stream": "s", "seq": 0, "part_id": "p", "t_capture_ns": 1, "t_sent_ns": 2,
            "width": 4, "height": 2, "channels": 1, "dtype": "uint8", "pixel_format": "Mono8", **kw}


def test_device_frame_id_and_timestamp_travel_and_old_headers_still_parse() -> None:
    old = FrameHeader.from_bytes(json.dumps(_header_dict()).encode())
    assert old.device_frame_id is None and old.device_timestamp_ns is None
    new = FrameHeader.from_bytes(json.dumps(_header_dict(device_frame_id=17, device_timestamp_ns=123)).encode())
    assert (new.device_frame_id, new.device_timestamp_ns) == (17, 123)
    assert FrameHeader.from_bytes(new.to_bytes()) == new
    with pytest.raises(MessageError, match=re.escape("Expected `int | null`, got `str` - at `$.device_frame_id`")):
        FrameHeader.from_bytes(json.dumps(_header_dict(device_frame_id="17")).encode())


@pytest.mark.parametrize(("raw", "error"), [
    (b'{"cmd": "fire"}', "Invalid enum value 'fire' - at `$.cmd`"),
    (b'{"cmd": "trigger", "part_id": 5}', "Expected `str | null`, got `int` - at `$.part_id`"),
    (b'{"cmd": "trigger", "part_id": ""}', "Expected `str` of length >= 1 - at `$.part_id`"),
    (b'{"cmd": "trigger", "part_id": "' + b"x" * 129 + b'"}', "Expected `str` of length <= 128 - at `$.part_id`"),
    (b"[1]", "Expected `object`, got `array`"),
    (b"{cmd", "not valid JSON"),
])
def test_bad_camera_commands_name_the_field(raw: bytes, error: str) -> None:
    with pytest.raises(MessageError, match=re.escape(f"camera command: {error}")):
        CameraCommand.from_bytes(raw)


@pytest.mark.parametrize(("message", "raw", "error"), [
    (CameraReply, b'{"ok": true, "seq": "3"}', "camera reply: Expected `int | null`, got `str` - at `$.seq`"),
    (Alarm, b'{"source": "a", "kind": "k", "message": "m", "severity": "loud"}',
     "alarm: Invalid enum value 'loud' - at `$.severity`"),
    (Alarm, b'{"source": "a", "message": "m"}', "alarm: Object missing required field `kind`"),
    (OperatorAction, b'{"action": "set_lot", "actor": "a", "request_id": "r", "detail": []}',
     "action: Expected `object`, got `array` - at `$.detail`"),
    (OperatorAction, b'{"action": "nuke", "actor": "a", "request_id": "r", "detail": {}}',
     "action: Invalid enum value 'nuke' - at `$.action`"),
])
def test_bad_control_messages_name_the_field(message: Any, raw: bytes, error: str) -> None:
    with pytest.raises(MessageError, match=re.escape(error)):
        message.from_bytes(raw)


def test_alarms_and_actions_round_trip() -> None:
    alarm = Alarm("infer[0]", "model_unavailable", "no model", "critical")
    assert Alarm.from_bytes(alarm.to_bytes()) == alarm and alarm.t_ns > 0
    detail = {"inspection_id": 7, "decision": "FAIL", "label": "dent", "note": ""}
    action = OperatorAction("review", "hmi", "r1", detail)
    assert OperatorAction.from_bytes(action.to_bytes()) == action


def test_camera_command_and_reply_round_trip() -> None:
    cmd = CameraCommand(cmd="trigger", part_id="LOT1-7")
    assert CameraCommand.from_bytes(cmd.to_bytes()) == cmd
    reply = CameraReply(ok=False, seq=3, part_id="LOT1-7", error="no frame")
    assert CameraReply.from_bytes(reply.to_bytes()) == reply
    with pytest.raises(MessageError, match=re.escape("camera reply: Expected `bool`, got `str` - at `$.ok`")):
        CameraReply.from_bytes(b'{"ok": "yes"}')


def test_camera_config_errors_name_the_path() -> None:
    from linewatch.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as err:
        parse_config({"cameras": [{"trigger": "encoder", "source": {
            "type": "genicam", "loss_timeout_s": 5, "reconnect_backoff_s": [3, 1], "buffer_handling": "Latest"}}]})
    problems = "\n".join(err.value.problems)
    assert "cameras[0].trigger: must be one of" in problems
    assert "cameras[0].source.loss_timeout_s: must be <= 2.0 (got 5)" in problems
    assert "cameras[0].source.reconnect_backoff_s: must satisfy 0 < first <= longest" in problems
    assert "cameras[0].source.buffer_handling" in problems
