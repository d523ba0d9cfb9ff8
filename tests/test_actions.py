"""The one "send an operator action and wait for its audit row" (store/actions.py) from both of its callers,
the api's routes and the plc's commands, against a real record process and its store."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from linewatch.api import qa
from linewatch.api.app import create_app
from linewatch.config import LineConfig
from linewatch.plc import register_map as pm
from linewatch.plc.process import Plc
from linewatch.store.actions import ActionNotConfirmed, send_action, send_action_async
from linewatch.wire import KIND_ALARM, Alarm, Endpoints, OperatorAction
from tests.api_harness import bearer
from tests.conftest import db_rows, wait_for
from tests.test_record_store import Rig

DONE, FAILED = pm.COMMAND_STATES["done"], pm.COMMAND_STATES["failed"]


@pytest.fixture
def record(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path, {})
    yield r
    r.close()
    r.ctx.term()


def _plc(cfg: LineConfig, timeout_s: float) -> Plc:
    return Plc(cfg.model_copy(update={"plc": cfg.plc.model_copy(update={"command_timeout_s": timeout_s})}), 0,
               threading.Event())


def _audit(rig: Rig) -> list[tuple[int, str, str, str]]:
    rows = db_rows(rig.cfg.data_dir, "SELECT id, actor, action, request_id FROM operator_actions ORDER BY id")
    return [(r["id"], r["actor"], r["action"], r["request_id"]) for r in rows]


def test_api_and_plc_wait_for_the_audit_row_the_same_way(record: Rig) -> None:
    endpoints, data_dir = Endpoints(record.cfg.run_dir), record.cfg.data_dir
    r = TestClient(create_app(record.cfg), headers=bearer(data_dir, "operator", "op-7")).put("/api/lot",
                                                                                          json={"lot": "LOT-1"})
    assert r.status_code == 200, r.text

    plc = _plc(record.cfg, 5)
    plc.lot_text = pm.text_to_registers("LOT-2")
    asyncio.run(plc._commit_lot())
    assert (plc.state.lot_status, plc.state.lot) == (DONE, "LOT-2")

    record.push.send_multipart([KIND_ALARM, Alarm("test", "demo", "look here").to_bytes()])
    wait_for(lambda: db_rows(data_dir, "SELECT id FROM alarms"), 10, "the alarm")
    asyncio.run(plc._ack_alarms())
    assert plc.state.ack_status == DONE

    direct = OperatorAction("set_lot", "tool", uuid.uuid4().hex, {"lot": "LOT-3"})
    direct_id = send_action(endpoints, data_dir, direct, 5)
    in_loop = OperatorAction("set_lot", "tool", uuid.uuid4().hex, {"lot": "LOT-4"})
    in_loop_id = asyncio.run(send_action_async(endpoints, data_dir, in_loop, 5))

    audit = _audit(record)
    assert [(a[1], a[2]) for a in audit] == [("token:op-7", "set_lot"), ("plc", "set_lot"), ("plc", "ack_alarm"),
                                             ("tool", "set_lot"), ("tool", "set_lot")]
    assert r.json()["audit_id"] == audit[0][0]
    assert (direct_id, in_loop_id) == (audit[3][0], audit[4][0])
    assert (audit[3][3], audit[4][3]) == (direct.request_id, in_loop.request_id)
    assert db_rows(data_dir, "SELECT acknowledged_by FROM alarms")[0]["acknowledged_by"] == "plc"


def test_an_action_record_refuses_or_never_sees_is_not_confirmed(record: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    endpoints, data_dir = Endpoints(record.cfg.run_dir), record.cfg.data_dir
    refused = OperatorAction("set_lot", "tool", uuid.uuid4().hex, {"lot": " padded"})  # past every lot check
    with pytest.raises(ActionNotConfirmed, match=r"^record did not confirm the set_lot within 0\.5 s$"):
        send_action(endpoints, data_dir, refused, 0.5)
    with pytest.raises(ActionNotConfirmed, match=r"^record did not confirm the set_lot within 0\.5 s$"):
        asyncio.run(send_action_async(endpoints, data_dir, refused, 0.5))

    record.close()  # record gone: both callers say so
    monkeypatch.setattr(qa, "CONFIRM_TIMEOUT_S", 0.3)
    r = TestClient(create_app(record.cfg), headers=bearer(data_dir)).put("/api/lot", json={"lot": "LOT-9"})
    assert r.status_code == 503 and r.json()["detail"] == "record did not confirm the set_lot within 0.3 s"
    plc = _plc(record.cfg, 0.3)
    plc.lot_text = pm.text_to_registers("LOT-9")
    asyncio.run(plc._commit_lot())
    assert plc.state.lot_status == FAILED and plc.state.last_error == pm.ERRORS["lot_not_confirmed"]
    assert _audit(record) == []
