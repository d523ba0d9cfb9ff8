"""The vision-system handshake of the plc process on a running line, driven by real Modbus TCP clients
(pymodbus, and mbpoll running every example of docs/modbus.md): trigger, buffered results read exactly once,
overrun, Set Offline, job change, the PLC watchdog and the client allow-list."""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ModbusException

from linewatch.config import ConfigError, parse_config
from linewatch.operations import OperationFailed, set_offline, switch_recipe
from linewatch.plc import register_map as pm
from linewatch.plc.cli import map_table
from linewatch.plc.handshake import Handshake, Result
from tests.conftest import REPO, db_rows, http_json, http_text, metric, wait_for

HS = pm.HANDSHAKE_BITS
SMALL = {"width": 64, "height": 48}  # frames the rules decide quickly: the handshake is under test, not the model


@contextmanager
def plc(port: int, source: str | None = None) -> Iterator[Plc]:
    client = ModbusTcpClient("127.0.0.1", port=port, timeout=3, retries=0,
                             source_address=(source, 0) if source else None)
    assert client.connect(), f"no Modbus server on port {port}"
    try:
        yield Plc(client)
    finally:
        client.close()


class Plc:
    """A PLC program's view of camera 0's handshake block."""

    def __init__(self, client: ModbusTcpClient, camera: int = 0):
        self.c, self.i = client, camera

    def coil(self, name: str, value: bool) -> None:
        r = self.c.write_coil(pm.handshake_address(self.i, name), value)
        assert not r.isError(), r

    def pulse(self, name: str) -> None:
        self.coil(name, False)
        self.coil(name, True)

    def bits(self) -> int:
        r = self.c.read_input_registers(pm.handshake_address(self.i, "hs_status"), count=1)
        assert not r.isError(), r
        return int(r.registers[0])

    def on(self, bit: str) -> bool:
        return bool(self.bits() >> HS[bit] & 1)

    def block(self) -> dict[str, Any]:
        """The handshake's input registers by name, read in one request as a PLC does."""
        regs = pm.handshake_registers(self.i, "input")
        r = self.c.read_input_registers(regs[0].address, count=pm.HS_INPUT_STRIDE)
        assert not r.isError(), r
        words = r.registers
        out: dict[str, Any] = {}
        for reg in regs:
            w = words[reg.address - regs[0].address: reg.address - regs[0].address + reg.size]
            out[reg.name] = (pm.registers_to_text(w) if reg.kind == "ascii" else w[0] << 16 | w[1]
                             if reg.kind == "u32" else w[0])
        return out

    def trigger(self) -> int:
        """One part: Trigger edge, Trigger Ack seen, Busy off; returns its Acquisition ID."""
        wait_for(lambda: self.on("trigger_ready"), 10, "Trigger Ready")
        self.coil("trigger_request", True)
        assert self.on("trigger_ack")
        wait_for(lambda: not self.on("busy"), 10, "Busy to clear")
        acquisition = int(self.block()["acquisition_id"])
        self.coil("trigger_request", False)
        assert not self.on("trigger_ack")
        return acquisition

    def take_result(self) -> dict[str, Any]:
        """Wait for Results Valid, read the result, acknowledge it and release the acknowledge."""
        wait_for(lambda: self.on("results_valid"), 10, "Results Valid")
        result = self.block()
        self.coil("results_ack", True)
        assert not self.on("results_valid")  # never the same result twice
        self.coil("results_ack", False)
        return result


def row_of(data_dir: Path, seq: int) -> dict[str, Any]:
    """The newest row of cam0's part `seq` (a restarted acquire starts a new stream at seq 0)."""
    return dict(wait_for(lambda: db_rows(data_dir, "SELECT * FROM inspections WHERE camera = 'cam0' AND seq = ? "
                                                   "ORDER BY id DESC", (seq,)), 10, f"the row of part {seq}")[0])


def result_code(row: dict[str, Any]) -> int:
    lost = row["decided_by"] in ("timeout", "not_inspected")
    return pm.RESULT_CODES["not_inspected" if lost else row["final"]]


def mbpoll(port: int, command: str) -> subprocess.CompletedProcess[str]:
    args = command.split()[1:]
    args[args.index("-p") + 1] = str(port)
    return subprocess.run(["mbpoll", *args], capture_output=True, text=True, timeout=20)


def doc_examples() -> list[str]:
    doc = (REPO / "docs" / "modbus.md").read_text()
    return [line.split("#")[0].strip() for block in re.findall(r"^```[a-z]*\n(.*?)^```", doc, re.S | re.M)
            for line in block.splitlines() if line.startswith("mbpoll ")]


def test_the_handshake_delivers_each_result_once_overruns_and_goes_offline(line: Any) -> None:
    ln = line(cameras=[{"name": "cam0", "trigger": "software", **SMALL}],
              plc={"results_buffer": 3, "clients": [{"address": "127.0.0.1"}, {"address": "127.0.0.3",
                                                                               "access": "read"}]}).start()
    with plc(ln.plc_port) as p:
        wait_for(lambda: p.on("online"), 30, "the camera online")
        assert not p.on("trigger_ready")  # Trigger Enable is off
        p.pulse("trigger_request")
        assert p.on("missed_trigger") and p.on("error") and p.block()["missed_trigger_count"] == 1
        assert not p.on("trigger_ack")
        p.coil("trigger_request", False)
        p.pulse("clear_error")
        assert not p.on("missed_trigger") and not p.on("error") and p.block()["hs_error_code"] == 0
        p.coil("trigger_enable", True)
        p.coil("results_buffer_enable", True)

        # Three parts triggered before any is read: each result once, oldest first, matching its row.
        seqs = [p.trigger() for _ in range(3)]
        for seq in seqs:
            got, row = p.take_result(), row_of(ln.data_dir, seq)
            assert (got["inspection_id"], got["part_id"], got["result_code"]) == (seq, row["part_id"],
                                                                                  result_code(row))
            assert got["processing_time"] == min(65535, round((row["t_decided_ns"] - row["t_capture_ns"]) / 1e5))
        assert not p.on("results_valid") and p.block()["results_queued"] == 0

        # Acks withheld: the queue fills (3), two more results overrun, every part still has its row.
        more = [p.trigger() for _ in range(5)]
        wait_for(lambda: p.on("results_buffer_overrun"), 10, "Results Buffer Overrun")
        wait_for(lambda: p.block()["overrun_count"] == 2, 10, "two overruns")
        assert p.block()["results_queued"] == 3
        assert [row_of(ln.data_dir, s)["seq"] for s in more] == more
        assert [p.take_result()["inspection_id"] for _ in range(3)] == more[:3]
        p.pulse("clear_error")
        assert not p.on("results_buffer_overrun")

        # Set Offline: triggers are missed; a part taken anyway (coil 16) is recorded not inspected, `offline`.
        p.coil("set_offline", True)
        wait_for(lambda: not p.on("online"), 10, "Online to clear")
        assert not p.on("trigger_ready")
        assert not p.c.write_coil(pm.TRIGGER_BASE, False).isError()
        assert not p.c.write_coil(pm.TRIGGER_BASE, True).isError()
        got = p.take_result()
        row = row_of(ln.data_dir, got["inspection_id"])
        assert (row["decided_by"], row["reasons"], got["result_code"]) == ("not_inspected", '["offline"]', 4)
        audit = db_rows(ln.data_dir, "SELECT actor, detail FROM operator_actions WHERE action = 'set_offline'")
        assert [(a["actor"], a["detail"]) for a in audit] == [("plc:127.0.0.1", '{"cameras": ["cam0"], '
                                                                                '"reason": "offline"}')]
        # A restarted acquire reads the offline state back from the audit log.
        old = ln.ready("acquire")[0]["pid"]
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: [r for r in ln.ready("acquire") if r["pid"] != old], 30, "acquire's restart")
        assert not p.c.write_coil(pm.TRIGGER_BASE, False).isError()
        wait_for(lambda: not p.c.write_coil(pm.TRIGGER_BASE, True).isError(), 10, "a trigger the camera takes")
        got = p.take_result()
        row = row_of(ln.data_dir, got["inspection_id"])
        assert (row["stream"], row["reasons"]) == (ln.ready("acquire")[0]["stream"], '["offline"]')
        p.coil("set_offline", False)
        wait_for(lambda: p.on("online"), 10, "Online again")
        seq = p.trigger()
        assert row_of(ln.data_dir, seq)["decided_by"] != "not_inspected"

    # The allow-list: 127.0.0.2 is not in it (closed unanswered), 127.0.0.3 may read only.
    refused = ModbusTcpClient("127.0.0.1", port=ln.plc_port, timeout=1, retries=0, source_address=("127.0.0.2", 0))
    refused.connect()
    with pytest.raises((ModbusException, OSError)):  # closed before any answer (reset, or closed mid-read)
        refused.read_input_registers(0, count=1)
    refused.close()
    with plc(ln.plc_port, "127.0.0.3") as ro:
        assert ro.bits() & 1 << HS["online"]
        denied = ro.c.write_coil(pm.handshake_address(0, "trigger_enable"), False)
        assert denied.isError() and denied.exception_code == 1
    with plc(ln.plc_port) as p:
        assert p.c.read_input_registers(pm.fixed("last_error").address).registers == [pm.ERRORS["read_only"]]
        assert p.on("trigger_ready")  # the read-only client's write changed nothing
    text = http_text(f"{ln.url}/metrics")
    assert metric(text, "linewatch_plc_clients_refused_total", address="127.0.0.2") >= 1
    assert metric(text, "linewatch_plc_results_overrun_total", camera="cam0") == 2
    assert metric(text, "linewatch_plc_errors_total", reason="read_only") == 1
    assert "Modbus client 127.0.0.2 refused" in ln.log.read_text()


def test_every_mbpoll_example_of_the_docs_runs_against_a_line(line: Any) -> None:
    """The docs' examples, in order, as a PLC programmer tries them: each must answer without an exception."""
    ln = line(cameras=[{"name": "cam0", "trigger": "software", **SMALL}], recipe="A",
              recipes=[{"name": "A", "job": 1}, {"name": "B", "job": 2}]).start()
    examples = doc_examples()
    assert len(examples) >= 8
    with plc(ln.plc_port) as p:
        wait_for(lambda: p.on("online"), 30, "the camera online")
        for command in examples:
            out = mbpoll(ln.plc_port, command)
            assert out.returncode == 0 and "exception" not in out.stdout.lower(), (command, out.stdout, out.stderr)
            time.sleep(0.2)  # a person typing: the trigger's part reaches the store in between
        block = p.block()
        assert (block["current_job"], block["hs_error_code"]) == (2, 0)
        assert p.c.read_holding_registers(pm.fixed("plc_heartbeat").address).registers == [1]
        rows = db_rows(ln.data_dir, "SELECT recipe FROM inspections WHERE camera = 'cam0' ORDER BY seq")
        assert [r["recipe"] for r in rows] == ["A", "A"]  # the two triggers came before the job change


def test_plc_map_prints_every_register_of_the_line() -> None:
    text = map_table(["cam0", "cam1"])
    for i in range(2):
        for table in ("coil", "discrete", "holding", "input"):
            for r in pm.camera_registers(i, table) + pm.handshake_registers(i, table):  # type: ignore[arg-type]
                assert f"`{r.name}` | cam{i} |" in text
    assert f"version {pm.MAP_VERSION}" in text
    out = subprocess.run([sys.executable, "-m", "linewatch", "plc", "map"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "`trigger_request` | cam0 |" in out.stdout


def test_a_job_change_mid_stream_switches_recipe_between_parts_and_the_watchdog_alarms(line: Any) -> None:
    recipes = [{"name": "A", "job": 1}, {"name": "B", "job": 2, "failsafe": {"review_band": [0.3, 0.7]}}]
    ln = line(cameras=[{"name": "cam0", "fps": 40, "max_frames": 300, **SMALL}], recipe="A", recipes=recipes,
              plc={"watchdog_s": 0.5, "watchdog_offline": True}).start()
    with plc(ln.plc_port) as p:
        assert p.block()["current_job"] == 1
        wait_for(lambda: len(db_rows(ln.data_dir, "SELECT id FROM inspections")) >= 30, 30, "parts under A")
        assert not p.c.write_register(pm.handshake_address(0, "job_number"), 7).isError()
        p.pulse("execute_command")  # no recipe has job 7
        wait_for(lambda: p.on("command_failed"), 10, "Command Failed")
        assert p.block()["hs_error_code"] == pm.ERRORS["job_unknown"] and p.block()["current_job"] == 1
        p.coil("execute_command", False)
        assert not p.on("command_failed")
        assert not p.c.write_register(pm.handshake_address(0, "job_number"), 2).isError()
        p.coil("execute_command", True)
        wait_for(lambda: p.on("command_completed"), 10, "Command Completed")
        assert p.block()["current_job"] == 2 and not p.on("command_executing")
        assert http_json(f"{ln.url}/api/status")["recipe"] == "B"
        wait_for(lambda: p.block()["result_job"] == 2, 10, "a result inspected under job 2")

        # The PLC's heartbeat: written once, then silent for longer than plc.watchdog_s: alarm, and offline.
        assert not p.c.write_register(pm.fixed("plc_heartbeat").address, 1).isError()
        wait_for(lambda: db_rows(ln.data_dir, "SELECT 1 FROM alarms WHERE kind = 'plc_watchdog'"), 10, "the alarm")
        wait_for(lambda: not p.on("online"), 10, "the camera offline")
        wait_for(lambda: db_rows(ln.data_dir, "SELECT 1 FROM inspections WHERE reasons = '[\"offline\"]'"), 10,
                 "a part recorded offline")
        assert not p.c.write_register(pm.fixed("plc_heartbeat").address, 2).isError()
        wait_for(lambda: db_rows(ln.data_dir, "SELECT 1 FROM alarms WHERE kind = 'plc_watchdog_back'"), 10,
                 "the heartbeat back")
        wait_for(lambda: p.on("online"), 10, "the camera online again")
        beat, deadline = 2, time.monotonic() + 60
        while len(db_rows(ln.data_dir, "SELECT id FROM inspections")) < 300:  # a PLC keeps its heartbeat going
            assert time.monotonic() < deadline, "the 300 parts were not all recorded within 60 s"
            beat += 1
            assert not p.c.write_register(pm.fixed("plc_heartbeat").address, beat).isError()
            time.sleep(0.1)
    ln.stop()
    rows = db_rows(ln.data_dir, "SELECT seq, recipe, ruleset_hash, reasons FROM inspections ORDER BY seq")
    assert [r["seq"] for r in rows] == list(range(300))  # none lost
    recipe = [r["recipe"] for r in rows]
    switch = recipe.index("B")
    assert 30 <= switch < 300 and recipe == ["A"] * switch + ["B"] * (300 - switch)  # A before, B after
    offline = [r["seq"] for r in rows if r["reasons"] == '["offline"]']
    assert offline and offline == list(range(offline[0], offline[-1] + 1)) and offline[-1] < 299  # then inspected
    assert {r["ruleset_hash"] for r in rows[:switch]}.isdisjoint({r["ruleset_hash"] for r in rows[switch:]})
    audit = db_rows(ln.data_dir, "SELECT actor, action, detail FROM operator_actions ORDER BY id")
    assert [(a["actor"], a["action"], a["detail"]) for a in audit] == [
        ("plc:127.0.0.1", "set_recipe", '{"recipe": "B", "job": 2}'),
        ("plc:watchdog", "set_offline", '{"cameras": ["cam0"], "reason": "offline"}'),
        ("plc:watchdog", "set_offline", '{"cameras": ["cam0"], "reason": null}')]


class PlcProgram:
    """A PLC's scan loop on one camera, as fast as Modbus answers: trigger, and now and then (at random) read
    and acknowledge what results wait, after a random delay; never more than the buffer holds unread."""

    def __init__(self, p: Plc, seed: int, depth: int):
        self.p, self.rng, self.depth = p, random.Random(seed), depth
        self.triggered: list[int] = []
        self.results: list[dict[str, Any]] = []

    def block(self) -> dict[str, Any]:
        return self.p.block()

    def trigger(self) -> None:
        self.p.coil("trigger_request", True)
        while (block := self.block())["hs_status"] >> HS["busy"] & 1:
            pass
        assert block["hs_status"] >> HS["trigger_ack"] & 1, block
        self.triggered.append(int(block["acquisition_id"]))
        self.p.coil("trigger_request", False)

    def read_results(self, until: int) -> None:
        """Read and acknowledge results until `until` have been read."""
        while len(self.results) < until:
            block = self.block()
            if not block["hs_status"] >> HS["results_valid"] & 1:
                continue
            self.results.append(block)
            if self.rng.random() < 0.3:
                time.sleep(self.rng.random() * 0.003)  # the PLC reads late
            self.p.coil("results_ack", True)
            self.p.coil("results_ack", False)

    def run(self, parts: int) -> None:
        self.p.coil("trigger_enable", True)
        self.p.coil("results_buffer_enable", True)
        while len(self.triggered) < parts:
            self.trigger()
            unread = len(self.triggered) - len(self.results)
            if unread >= self.depth - 1 or self.rng.random() < 0.3:
                self.read_results(len(self.triggered) - self.rng.randint(0, min(unread, self.depth - 2)))
        self.read_results(parts)


@pytest.mark.slow
def test_a_plc_reads_10000_triggered_results_each_once_in_order_and_overruns_without_losing_parts(
        line: Any) -> None:
    cams, per_cam, depth = 4, 2500, 8
    ln = line(cameras=[{"name": f"cam{i}", "trigger": "software", **SMALL} for i in range(cams)],
              plc={"results_buffer": depth, "command_timeout_s": 20}).start()
    programs = []
    with ExitStack() as stack:
        for i in range(cams):
            client = stack.enter_context(plc(ln.plc_port))
            programs.append(PlcProgram(Plc(client.c, i), seed=i, depth=depth))
        wait_for(lambda: all(pr.p.on("online") for pr in programs), 30, "every camera online")
        threads = [threading.Thread(target=pr.run, args=(per_cam,)) for pr in programs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        assert not any(t.is_alive() for t in threads)

        # Acks withheld on camera 0: 8 results wait, 4 more overrun; every one of the 12 parts has its row.
        p = programs[0].p
        for _ in range(depth + 4):
            programs[0].trigger()
        held = programs[0].triggered[per_cam:]
        wait_for(lambda: p.block()["overrun_count"] == 4, 20, "4 overruns")
        assert p.on("results_buffer_overrun") and p.block()["results_queued"] == depth
        assert p.block()["inspection_id"] == held[0]  # the oldest unacknowledged result, never a newer one
    ln.stop()
    for i, pr in enumerate(programs):
        rows = {r["seq"]: dict(r) for r in db_rows(ln.data_dir, "SELECT * FROM inspections WHERE camera = ?",
                                                    (f"cam{i}",))}
        assert len(pr.triggered) == per_cam + (depth + 4 if i == 0 else 0)
        assert sorted(rows) == sorted(pr.triggered)  # every triggered part has its row, no other part was taken
        assert [r["inspection_id"] for r in pr.results] == pr.triggered[:per_cam]  # each once, in order
        for got in pr.results:
            row = rows[got["inspection_id"]]
            assert (got["part_id"], got["result_code"]) == (row["part_id"], result_code(row)), (got, row)


def test_line_operations_refuse_what_the_line_does_not_have(tmp_path: Path) -> None:
    cfg = parse_config({"data_dir": str(tmp_path), "recipe": "A", "recipes": [{"name": "A", "job": 1}]})
    with pytest.raises(OperationFailed, match=r"recipe 'B' is not among the line's recipes \(A\)"):
        asyncio.run(switch_recipe(cfg, "B", "test", 0.1))
    with pytest.raises(OperationFailed, match="offline reason must be one of offline, paused, got 'asleep'"):
        asyncio.run(set_offline(cfg, ["cam0"], "asleep", "test", 0.1))
    with pytest.raises(OperationFailed, match=r"cameras must be some of cam0, got \['cam9'\]"):
        asyncio.run(set_offline(cfg, ["cam9"], "paused", "test", 0.1))
    with pytest.raises(OperationFailed, match="did not answer"):  # no line running: nobody takes the pause
        asyncio.run(set_offline(cfg, ["cam0"], "paused", "test", 0.1))
    with pytest.raises(ConfigError, match="recipe 'C' is not among recipes"):
        parse_config({"recipe": "C", "recipes": [{"name": "A", "job": 1}]})
    with pytest.raises(ConfigError, match="recipe jobs must be unique, repeated: 1"):
        parse_config({"recipe": "A", "recipes": [{"name": "A", "job": 1}, {"name": "B", "job": 1}]})


def test_without_buffering_the_registers_hold_the_newest_result_and_ack_empties_them() -> None:
    hs = Handshake("cam0", depth=2)
    results = [Result(seq, 1, 1, 1, 0, 10, 1, f"p{seq}") for seq in range(4)]
    hs.add(results[0])
    hs.add(results[1])
    assert hs.values(True, True, 1)["inspection_id"] == 1 and hs.valid() and not hs.overrun  # the newest only
    hs.coils["results_ack"] = True
    hs.acknowledged()
    assert not hs.valid() and hs.values(True, True, 1)["results_queued"] == 0
    hs.coils.update(results_ack=False, results_buffer_enable=True)
    for r in results:
        hs.add(r)
    assert hs.overrun and hs.overrun_count == 2 and [r.seq for r in hs.queue] == [0, 1]  # the oldest kept
    assert hs.status(True, True) >> pm.HANDSHAKE_BITS["inspection_completed"] & 1 == 0  # toggled 6 times
