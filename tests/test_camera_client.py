"""The one camera-control client (wire/camera_client.py) from each of its callers: the api's trigger route,
the plc's trigger command and `linewatch cameras trigger`, against a real acquire, a silent one and a broken one."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
import zmq
import zmq.asyncio
from fastapi.testclient import TestClient

from linewatch.api import cameras as api_cameras
from linewatch.api.app import create_app
from linewatch.cli import main
from linewatch.config import LineConfig, parse_config
from linewatch.plc import register_map as pm
from linewatch.plc.process import Plc
from linewatch.wire import CameraCommand, Endpoints, MessageError
from linewatch.wire.camera_client import CameraLink, CameraNoAnswer, request_camera, request_camera_async
from tests.acquire_harness import AcquireRig
from tests.api_harness import bearer

TRIGGER = CameraCommand(cmd="trigger")
SILENT = r"camera '{}': acquire did not answer on ipc://\S+/control-{}\.sock within 0\.3 s \(is the line running\?\)"


@pytest.fixture
def broken_acquire(tmp_path: Path) -> Iterator[Endpoints]:
    """A control socket for camera `bad` that answers every command with something that is not a reply."""
    endpoints = Endpoints(tmp_path / "run")
    endpoints.run_dir.mkdir(parents=True, exist_ok=True)
    ctx: zmq.Context[Any] = zmq.Context()
    rep = ctx.socket(zmq.REP)
    rep.bind(endpoints.control("bad"))
    stop = threading.Event()

    def answer() -> None:
        while not stop.is_set():
            if rep.poll(50):
                rep.recv()
                rep.send(b'{"ok": "maybe"}')

    thread = threading.Thread(target=answer)
    thread.start()
    yield endpoints
    stop.set()
    thread.join()
    rep.close(0)
    ctx.term()


@contextmanager
def _plc(cfg: LineConfig, timeout_s: float) -> Iterator[Plc]:
    """The plc's command side on its own: no Modbus server, its asyncio context made here as `run` would."""
    cfg = cfg.model_copy(update={"plc": cfg.plc.model_copy(update={"command_timeout_s": timeout_s})})
    plc = Plc(cfg, 0, threading.Event())
    plc.zctx = zmq.asyncio.Context()
    plc.link_cameras()
    try:
        yield plc
    finally:
        plc.unlink_cameras()
        plc.zctx.term()


def test_sync_and_async_requests_time_out_naming_the_camera(tmp_path: Path) -> None:
    endpoints = Endpoints(tmp_path)
    with pytest.raises(CameraNoAnswer, match=SILENT.format("c9", "c9")):
        request_camera(endpoints, "c9", TRIGGER, 0.3)
    with pytest.raises(CameraNoAnswer, match=SILENT.format("c9", "c9")):
        asyncio.run(request_camera_async(endpoints, "c9", TRIGGER, 0.3))


def test_a_bad_reply_names_the_camera_and_the_field(broken_acquire: Endpoints) -> None:
    want = "camera 'bad': camera reply: Expected `bool`, got `str` - at `$.ok`"
    with pytest.raises(MessageError) as sync:
        request_camera(broken_acquire, "bad", TRIGGER, 5)
    with pytest.raises(MessageError) as in_loop:
        asyncio.run(request_camera_async(broken_acquire, "bad", TRIGGER, 5))
    assert str(sync.value) == str(in_loop.value) == want


def test_api_route_triggers_through_the_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rig = AcquireRig(tmp_path, {"name": "c1", "trigger": "software"}).start()
    client = TestClient(create_app(rig.cfg), headers=bearer(rig.cfg.data_dir, "operator"))
    try:
        r = client.post("/api/cameras/c1/trigger", params={"part_id": "P-1"})
        again = client.post("/api/cameras/c1/trigger")
        rig.pump_until(lambda: len(rig.frames) >= 2, 5, "two triggered frames")
    finally:
        rig.close()
    assert r.status_code == 200 and r.json() == {"camera": "c1", "seq": 0, "part_id": "P-1"}
    assert again.status_code == 200 and again.json()["seq"] == 1  # a REQ per request: the second one works too
    monkeypatch.setattr(api_cameras, "TRIGGER_REPLY_TIMEOUT_S", 0.3)
    silent = client.post("/api/cameras/c1/trigger")  # acquire is gone
    assert silent.status_code == 504
    assert silent.json()["detail"].startswith("camera 'c1': acquire did not answer on ipc://")


def test_api_route_answers_502_for_a_bad_reply(broken_acquire: Endpoints, tmp_path: Path) -> None:
    cfg = parse_config({"data_dir": str(tmp_path), "cameras": [{"name": "bad", "trigger": "software"}]})
    r = TestClient(create_app(cfg), headers=bearer(tmp_path, "operator")).post("/api/cameras/bad/trigger")
    assert r.status_code == 502 and r.json()["detail"].startswith("camera 'bad': camera reply: Expected `bool`")


def test_plc_trigger_goes_through_the_client(tmp_path: Path) -> None:
    rig = AcquireRig(tmp_path, {"name": "c1", "trigger": "software"}).start()
    try:
        with _plc(rig.cfg, 5) as plc:
            async def twice() -> None:  # on one socket, kept open between the triggers
                await plc._trigger(0)
                await plc._trigger(0)

            asyncio.run(twice())
        rig.pump_until(lambda: len(rig.frames) >= 2, 5, "two triggered frames")
    finally:
        rig.close()
    assert (plc.state.cameras[0].trigger_seq, plc.state.cameras[0].trigger_status) == (1, pm.COMMAND_STATES["done"])
    with _plc(rig.cfg, 0.3) as gone:  # acquire is gone: the command fails as timed out
        asyncio.run(gone._trigger(0))
    assert gone.state.cameras[0].trigger_status == pm.COMMAND_STATES["failed"]
    assert gone.state.last_error == pm.ERRORS["trigger_timeout"]


def test_a_kept_link_drops_an_unanswered_command_and_serves_the_camera_once_it_is_back(tmp_path: Path) -> None:
    """The plc's link stays open between triggers; one that timed out is closed with its command, so the camera
    that comes up later takes only the next trigger (seq 0), not the stale one too."""
    rig = AcquireRig(tmp_path, {"name": "c1", "trigger": "software"})
    ctx = zmq.asyncio.Context()
    link = CameraLink(Endpoints(rig.cfg.run_dir), "c1", ctx)

    async def play() -> list[Any]:
        with pytest.raises(CameraNoAnswer, match=SILENT.format("c1", "c1")):
            await link.request(TRIGGER, 0.3)
        rig.start()
        return [await link.request(CameraCommand(cmd="trigger", part_id=f"P{i}"), 5) for i in range(3)]

    try:
        replies = asyncio.run(play())
        rig.pump_until(lambda: len(rig.frames) >= 3, 5, "three triggered frames")
        rig.pump(0.3)
    finally:
        link.close()
        ctx.term()
        rig.close()
    assert [(r.ok, r.seq, r.part_id) for r in replies] == [(True, i, f"P{i}") for i in range(3)]
    assert [f.part_id for f in rig.frames] == ["P0", "P1", "P2"]


def test_cli_trigger_goes_through_the_client(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rig = AcquireRig(tmp_path, {"name": "c1", "trigger": "software"}).start()
    config = tmp_path / "line.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path), "cameras": [{"name": "c1", "trigger": "software"}]}))
    try:
        code = main(["cameras", "trigger", "c1", "--config", str(config), "--part-id", "FROM-CLI"])
        rig.pump_until(lambda: len(rig.frames) >= 1, 5, "the triggered frame")
    finally:
        rig.close()
    assert code == 0
    assert json.loads(capsys.readouterr().out) == {"ok": True, "seq": 0, "part_id": "FROM-CLI", "error": None}


def test_cli_trigger_reports_a_bad_reply_naming_the_camera(broken_acquire: Endpoints, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "line.yaml"
    config.write_text(yaml.safe_dump({"data_dir": str(tmp_path), "cameras": [{"name": "bad", "trigger": "software"}]}))
    assert main(["cameras", "trigger", "bad", "--config", str(config)]) == 2
    assert capsys.readouterr().err.startswith("error: camera 'bad': camera reply: Expected `bool`")
