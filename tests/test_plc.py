"""The plc process on a running line, read and written by real Modbus TCP clients over loopback
(pymodbus, and mbpoll as an independent one): status word, counters, triggers, lot, alarms, bad writes."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pymodbus.client import ModbusTcpClient

from linewatch.config import ConfigError, parse_config
from linewatch.line.supervisor import Supervisor
from linewatch.plc import register_map as pm
from linewatch.plc.state import LineState
from tests.conftest import REFERENCE_MODEL, count_rows, db_rows, wait_for

BIT = pm.STATUS_BITS
DONE, FAILED = pm.COMMAND_STATES["done"], pm.COMMAND_STATES["failed"]


@contextmanager
def modbus(port: int) -> Iterator[ModbusTcpClient]:
    client = ModbusTcpClient("127.0.0.1", port=port, timeout=3, retries=0)
    assert client.connect(), f"no Modbus server on port {port}"
    try:
        yield client
    finally:
        client.close()


def inputs(c: ModbusTcpClient, address: int, count: int = 1) -> list[int]:
    r = c.read_input_registers(address, count=count)
    assert not r.isError(), r
    return list(r.registers)


def status(c: ModbusTcpClient) -> int:
    return inputs(c, 0)[0]


def u32(c: ModbusTcpClient, address: int) -> int:
    high, low = inputs(c, address, 2)
    return high << 16 | low


def pulse(c: ModbusTcpClient, coil: int) -> Any:
    assert not c.write_coil(coil, False).isError()
    return c.write_coil(coil, True)


def counters(c: ModbusTcpClient) -> dict[str, int]:
    return {name: u32(c, pm.fixed(f"count_{name}").address)
            for name in ("total", "pass", "fail", "review", "not_inspected")}


def db_counters(data_dir: Path) -> dict[str, int]:
    rows = db_rows(data_dir, "SELECT count(*) AS total, sum(final = 'PASS') AS pass, sum(final = 'FAIL') AS fail, "
                             "sum(final = 'REVIEW') AS review, "
                             "sum(decided_by IN ('timeout', 'not_inspected')) AS not_inspected FROM inspections")
    return {k: int(rows[0][k] or 0) for k in ("total", "pass", "fail", "review", "not_inspected")}


def set_lot_text(c: ModbusTcpClient, text: str) -> Any:
    return c.write_registers(pm.fixed("lot_text").address, pm.text_to_registers(text))


def mbpoll(port: int, *args: str) -> str:
    """mbpoll, 0-based addresses, one poll; its exit code is checked by the caller through the text."""
    out = subprocess.run(["mbpoll", "-m", "tcp", "-p", str(port), "-0", "-1", *args], capture_output=True,
                         text=True, timeout=20)
    return out.stdout + out.stderr


@pytest.mark.slow
def test_plc_reads_the_line_triggers_parts_and_sets_the_lot(line: Any) -> None:
    ln = line(cameras=[{"name": "cam0", "trigger": "software"}, {"name": "cam1", "fps": 20, "max_frames": 40}]).start()
    with modbus(ln.plc_port) as c:
        assert inputs(c, pm.fixed("map_version").address) == [pm.MAP_VERSION]
        assert inputs(c, pm.fixed("cameras").address) == [2]
        beat = inputs(c, pm.fixed("heartbeat").address)[0]
        wait_for(lambda: inputs(c, pm.fixed("heartbeat").address)[0] != beat, 5, "the heartbeat to count")
        wait_for(lambda: status(c) & 1 << BIT["line_running"], 30, "the line_running bit")
        assert not status(c) & (1 << BIT["rules_only"] | 1 << BIT["line_stop_requested"])
        assert not c.read_discrete_inputs(BIT["line_running"], count=1).isError()
        assert c.read_discrete_inputs(0, count=16).bits[BIT["line_running"]] is True

        # The lot: text in holding registers, then a rising edge on commit_lot; record writes the audit row.
        assert not set_lot_text(c, "LOT-42/A").isError()
        assert not pulse(c, pm.fixed("commit_lot").address).isError()
        wait_for(lambda: inputs(c, pm.fixed("lot_status").address) == [DONE], 10, "the lot commit")
        assert pm.registers_to_text(inputs(c, pm.fixed("lot").address, pm.LOT_REGISTERS)) == "LOT-42/A"
        audit = db_rows(ln.data_dir, "SELECT actor, detail FROM operator_actions WHERE action = 'set_lot'")
        assert [(a["actor"], a["detail"]) for a in audit] == [("plc", '{"lot": "LOT-42/A"}')]

        # A software trigger: rising edge on coil 16 + camera index; the reply shows the part's seq.
        assert not pulse(c, pm.TRIGGER_BASE).isError()
        wait_for(lambda: inputs(c, pm.camera_address(0, "trigger_status")) == [DONE], 10, "the trigger")
        seq = u32(c, pm.camera_address(0, "trigger_seq"))
        row = wait_for(lambda: db_rows(ln.data_dir, "SELECT * FROM inspections WHERE camera = 'cam0' AND seq = ?",
                                       (seq,)), 10, "the triggered part's row")[0]
        assert row["lot"] == "LOT-42/A"
        assert row["decided_by"] == "model" or row["decided_by"].startswith("rule:")
        wait_for(lambda: inputs(c, pm.camera_address(0, "verdict")) == [pm.VERDICT_CODES[row["final"]]], 5,
                 "cam0's latest verdict")
        assert u32(c, pm.camera_address(0, "verdict_seq")) == seq
        assert c.write_coil(pm.TRIGGER_BASE, True).isError() is False  # still high: no edge, no trigger
        assert inputs(c, pm.camera_address(1, "camera_state")) == [pm.CAMERA_STATES["streaming"]]

        # Bad requests: an exception or an error code, never a crash.
        refused = pulse(c, pm.TRIGGER_BASE + 1)  # cam1 runs free: no software trigger
        assert refused.isError() and refused.exception_code == 3
        assert inputs(c, pm.fixed("last_error").address) == [pm.ERRORS["trigger_mode"]]
        for bad, code in ((c.write_coil(pm.TRIGGER_BASE + 2, True), 2),  # no third camera
                          (c.write_coil(9, True), 2),  # unassigned coil
                          (c.write_register(pm.LOT_REGISTERS + 1, 0x4142), 2),  # past the lot text and heartbeat
                          (c.write_register(0, 0xC3A9), 3),  # not ASCII
                          (c.read_input_registers(pm.extent("input", 2), count=1), 2)):  # past the map
            assert bad.isError() and bad.exception_code == code, bad
        assert not set_lot_text(c, " padded").isError()
        assert not pulse(c, pm.fixed("commit_lot").address).isError()
        wait_for(lambda: inputs(c, pm.fixed("lot_status").address) == [FAILED], 10, "the refused lot")
        assert inputs(c, pm.fixed("last_error").address) == [pm.ERRORS["lot_invalid"]]
        # Six refusals were the plc's own; the read past the map was refused by pymodbus itself.
        assert inputs(c, pm.fixed("error_count").address) == [6]
        assert inputs(c, 8, 2) == [0, 0]  # unassigned inside the map: read as 0, as PLCs read whole blocks

        # mbpoll, an independent client: a trigger through coil 16 and the counters, read 0-based.
        assert "Written 1 references" in mbpoll(ln.plc_port, "-t", "0", "-r", str(pm.TRIGGER_BASE), "127.0.0.1", "0")
        assert "Written 1 references" in mbpoll(ln.plc_port, "-t", "0", "-r", str(pm.TRIGGER_BASE), "127.0.0.1", "1")
        wait_for(lambda: u32(c, pm.camera_address(0, "trigger_seq")) == seq + 1, 10, "the mbpoll trigger")
        wait_for(lambda: count_rows(ln.data_dir) >= 42, 60, "cam1's 40 parts and cam0's 2")
        wait_for(lambda: counters(c) == db_counters(ln.data_dir), 10, "the counters to match the store")
        text = mbpoll(ln.plc_port, "-t", "3", "-r", str(pm.fixed("count_total").address), "-c", "10", "127.0.0.1")
        polled = {int(a): int(v) for a, v in re.findall(r"^\[(\d+)\]:\s+(-?\d+)", text, re.M)}
        want = inputs(c, pm.fixed("count_total").address, 10)
        assert [polled[pm.fixed("count_total").address + i] for i in range(10)] == want, text
        assert want[1] == db_counters(ln.data_dir)["total"] > 0

    # A killed plc is restarted: counters start again from the store, the lot from the audit log.
    old = ln.ready("plc")[0]["pid"]
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: [p for p in ln.ready("plc") if p["pid"] != old], 30, "the plc's restart")
    with modbus(ln.plc_port) as c:
        assert counters(c) == db_counters(ln.data_dir)
        assert pm.registers_to_text(inputs(c, pm.fixed("lot").address, pm.LOT_REGISTERS)) == "LOT-42/A"
        assert inputs(c, pm.camera_address(0, "verdict_seq") + 1) == [seq + 1]
    ln.stop()
    rows = db_rows(ln.data_dir, "SELECT lot FROM inspections WHERE camera = 'cam0' ORDER BY seq")
    assert [r["lot"] for r in rows] == ["LOT-42/A", "LOT-42/A"]


@pytest.mark.slow
def test_plc_sees_rules_only_mode_and_a_streak_requests_a_line_stop(line: Any, tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    shutil.copy(REFERENCE_MODEL, model)
    streak = {"consecutive_fails": 10, "max_fail_rate": 1.0, "request_stop": True}
    ln = line(cameras=[{"name": "cam0", "fps": 30}], model={"path": str(model)},
              failsafe={"model_health": {"reload_check_s": 0.2}, "streak": streak}).start()
    with modbus(ln.plc_port) as c:
        wait_for(lambda: count_rows(ln.data_dir) >= 20, 60, "the first verdicts")
        assert not status(c) & (1 << BIT["rules_only"] | 1 << BIT["line_stop_requested"])

        model.write_bytes(b"\x08\x07not a model" * 100)  # every part now FAILs on rules alone
        wait_for(lambda: status(c) & 1 << BIT["rules_only"], 20, "the rules_only bit")
        wait_for(lambda: status(c) & 1 << BIT["line_stop_requested"], 30, "the line stop request")
        assert status(c) & 1 << BIT["critical_alarm"]
        stops = db_rows(ln.data_dir, "SELECT severity, message FROM alarms WHERE kind = 'fail_streak'")
        assert stops and all(a["severity"] == "critical" and "line stop requested" in a["message"] for a in stops)

        assert not pulse(c, pm.fixed("reset_line_stop").address).isError()
        wait_for(lambda: not status(c) & 1 << BIT["line_stop_requested"], 5, "the reset")
        assert not pulse(c, pm.fixed("ack_alarms").address).isError()
        wait_for(lambda: inputs(c, pm.fixed("ack_status").address) == [DONE], 10, "the acknowledge")
        wait_for(lambda: not status(c) & 1 << BIT["critical_alarm"], 5, "the critical_alarm bit to clear")
        acked = db_rows(ln.data_dir, "SELECT acknowledged_by FROM alarms WHERE kind IN ('fail_streak', "
                                     "'model_unavailable')")
        assert acked and {a["acknowledged_by"] for a in acked} == {"plc"}

        shutil.copy(REFERENCE_MODEL, tmp_path / "good.onnx")
        (tmp_path / "good.onnx").replace(model)
        wait_for(lambda: not status(c) & 1 << BIT["rules_only"], 30, "rules_only to end")
        assert not status(c) & 1 << BIT["line_stop_requested"]
    ln.stop()


@pytest.mark.slow
def test_plc_is_optional_and_must_not_share_the_api_port(tmp_path: Path) -> None:
    base = {"data_dir": str(tmp_path)}
    names = [c.name for c in Supervisor(parse_config(base)).children]
    assert names.index("api") < names.index("plc") < names.index("acquire[cam0]")
    assert "plc" not in [c.name for c in Supervisor(parse_config({**base, "plc": {"enabled": False}})).children]
    with pytest.raises(ConfigError, match=r"plc\.port and api\.port must differ"):
        parse_config({**base, "plc": {"port": 8080}})


@pytest.mark.parametrize("text", ["A", "LOT-2026-11-27/7", "x" * 64])
def test_lot_text_round_trips_through_registers(text: str) -> None:
    regs = pm.text_to_registers(text)
    assert len(regs) == pm.LOT_REGISTERS and pm.registers_to_text(regs) == text


def test_u32_is_high_word_first_and_wraps() -> None:
    assert pm.u32(0x0001_0002) == (1, 2)
    assert pm.u32(2**32 + 5) == (0, 5)


def test_camera_block_addresses_follow_the_map() -> None:
    assert pm.camera_address(0, "verdict") == pm.CAMERA_BASE
    assert pm.camera_address(3, "camera_state") == pm.CAMERA_BASE + 3 * pm.CAMERA_STRIDE + 7
    fields = [r for r in pm.CAMERA_FIELDS if r.table == "input"]
    assert sum(r.size for r in fields) == pm.CAMERA_STRIDE


def test_the_map_assigns_version_1_s_addresses_unchanged_and_the_handshake_blocks() -> None:
    hs = pm.HS_COIL_BASE
    assert pm.spans("coil", 2) == [(0, 3), (pm.TRIGGER_BASE, 2), (hs, 7), (hs + pm.HS_COIL_STRIDE, 7)]
    assert pm.spans("discrete", 2) == [(0, 16), (pm.HS_BITS_BASE, 2 * pm.HS_BITS_STRIDE)]
    assert pm.spans("holding", 2) == [(0, pm.LOT_REGISTERS + 1), (pm.HS_JOB_BASE, 2)]
    assert pm.spans("input", 2) == [(0, 8), (10, 10 + pm.LOT_REGISTERS), (pm.CAMERA_BASE, 2 * pm.CAMERA_STRIDE),
                                    (pm.HS_INPUT_BASE, 2 * pm.HS_INPUT_STRIDE)]
    assert pm.extent("input", 2) == pm.HS_INPUT_BASE + 2 * pm.HS_INPUT_STRIDE  # the server offers 0 to here
    fields = [r for r in pm.HANDSHAKE if r.table == "input"]
    assert sum(r.size for r in fields) == pm.HS_INPUT_STRIDE


def test_every_input_register_of_the_map_has_a_value(tmp_path: Path) -> None:
    cfg = parse_config({"data_dir": str(tmp_path), "cameras": [{"name": "a"}, {"name": "b"}]})
    state = LineState(cfg)
    state.lot, state.counts["fail"], state.cameras[1].seq = "LOT-7", 2**32 + 3, 70_000
    regs = state.input_registers()
    assert sorted(regs) == [a for start, n in pm.spans("input", 2) for a in range(start, start + n)]
    assert pm.registers_to_text([regs[pm.fixed("lot").address + i] for i in range(pm.LOT_REGISTERS)]) == "LOT-7"
    assert (regs[pm.fixed("count_fail").address], regs[pm.fixed("count_fail").address + 1]) == (0, 3)
    at = pm.camera_address(1, "verdict_seq")
    assert (regs[at], regs[at + 1]) == pm.u32(70_000)
    # A read renders only the blocks it touches, each whole, with the values of the full render
    hs = pm.handshake_address(1, "hs_status")
    for start, count in ((hs, 7), (at, 2), (0, 1), (pm.CAMERA_BASE + pm.CAMERA_STRIDE - 1, 2), (hs - 1, 1)):
        part = state.input_registers(start, count)
        assert set(range(start, start + count)) & set(regs) <= set(part), (start, count)
        assert all(regs[a] == v for a, v in part.items())
    assert len(state.input_registers(hs, 7)) == pm.HS_INPUT_STRIDE  # that handshake block alone


@pytest.mark.slow
def test_a_second_pulse_while_a_command_runs_is_refused_as_busy(line: Any) -> None:
    ln = line(cameras=[{"name": "cam0", "trigger": "software"}], plc={"command_timeout_s": 3}).start()
    record = ln.ready("record")[0]["pid"]
    with modbus(ln.plc_port) as c:
        wait_for(lambda: status(c) & 1 << BIT["line_running"], 30, "the line_running bit")
        assert not set_lot_text(c, "LOT-1").isError()
        os.kill(record, signal.SIGSTOP)  # the lot cannot be confirmed: the commit stays busy until its timeout
        try:
            assert not pulse(c, pm.fixed("commit_lot").address).isError()
            again = pulse(c, pm.fixed("commit_lot").address)  # the edge comes while the first commit runs
            assert again.isError() and again.exception_code == 6, again
            assert inputs(c, pm.fixed("last_error").address) == [pm.ERRORS["busy"]]
            assert inputs(c, pm.fixed("lot_status").address) == [pm.COMMAND_STATES["busy"]]
            wait_for(lambda: inputs(c, pm.fixed("lot_status").address) == [FAILED], 10, "the commit's timeout")
            assert inputs(c, pm.fixed("last_error").address) == [pm.ERRORS["lot_not_confirmed"]]
        finally:
            os.kill(record, signal.SIGCONT)
        assert not pulse(c, pm.fixed("commit_lot").address).isError()  # not busy any more: runs again
        wait_for(lambda: inputs(c, pm.fixed("lot_status").address) == [DONE], 10, "the lot commit")
