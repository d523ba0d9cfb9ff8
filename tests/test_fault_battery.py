"""The fault battery: each role of the line killed with SIGKILL mid-stream, and a power cut of the whole tree.

Every frame ends as exactly one row per (stream, seq) across the fault, and the store stays sound.
Kills of a worker and of record, a full data disk and a camera that disappears and returns have
their own tests (test_line.py, test_disk_full.py, test_genicam.py).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
from pymodbus.client import ModbusTcpClient

from tests.conftest import count_rows, db_rows, http_json, wait_for

pytestmark = pytest.mark.slow


def _streams(data_dir: Any) -> dict[str, list[int]]:
    """seqs per acquisition stream, in order."""
    out: dict[str, list[int]] = {}
    for r in db_rows(data_dir, "SELECT stream, seq FROM inspections ORDER BY stream, seq"):
        out.setdefault(r["stream"], []).append(r["seq"])
    return out


def _assert_every_frame_once(data_dir: Any) -> None:
    for stream, seqs in _streams(data_dir).items():
        assert seqs == list(range(len(seqs))), f"stream {stream}: a sequence number is missing or repeated"
    assert db_rows(data_dir, "PRAGMA integrity_check")[0][0] == "ok"


@pytest.mark.parametrize("role", ["acquire[cam0]", "api", "plc"])
def test_a_child_killed_mid_stream_is_restarted_and_every_frame_ends_as_one_row(line: Any, role: str) -> None:
    ln = line(cameras=[{"name": "cam0", "fps": 40}], record={"deadline_ms": 1000}).start()
    wait_for(lambda: count_rows(ln.data_dir) >= 60, 60, "the first verdicts")
    kind = role.split("[")[0]  # ready() globs: "[cam0]" would be a character class
    old_pid = next(info["pid"] for info in ln.ready(kind) if info["name"] == role)
    os.kill(old_pid, signal.SIGKILL)
    wait_for(lambda: [r for r in ln.ready(kind) if r["name"] == role and r["pid"] != old_pid], 30,
             f"{role}'s restart")
    at_restart = count_rows(ln.data_dir)
    wait_for(lambda: count_rows(ln.data_dir) >= at_restart + 60, 60, "parts recorded after the restart")
    if role == "api":  # serving again: the HMI's status and readiness
        assert wait_for(lambda: http_json(f"{ln.url}/api/status")["counts"]["total"] > at_restart, 30, "api")
    if role == "plc":  # a PLC's read is answered again
        client = ModbusTcpClient("127.0.0.1", port=ln.plc_port)
        try:
            assert wait_for(client.connect, 30, "the Modbus server")
            assert not client.read_input_registers(0, count=4).isError()
        finally:
            client.close()
    ln.stop()

    streams = _streams(ln.data_dir)
    assert len(streams) == (2 if role.startswith("acquire") else 1), streams.keys()  # a new run, a new stream
    _assert_every_frame_once(ln.data_dir)
    alarms = db_rows(ln.data_dir, "SELECT message FROM alarms WHERE kind = 'process_restart'")
    assert any(f"{role} died (signal SIGKILL)" in a["message"] for a in alarms), [a["message"] for a in alarms]


def test_a_power_cut_loses_no_committed_row_and_the_line_restarts_on_the_same_store(line: Any) -> None:
    ln = line(cameras=[{"name": "cam0", "fps": 40}], record={"deadline_ms": 1000}).start()
    wait_for(lambda: count_rows(ln.data_dir) >= 100, 60, "the first verdicts")
    committed = {(r["stream"], r["seq"], r["final"]) for r in
                 db_rows(ln.data_dir, "SELECT stream, seq, final FROM inspections")}
    ln.kill_tree()  # SIGKILL to every process at once: nothing gets to flush or close
    assert db_rows(ln.data_dir, "PRAGMA integrity_check")[0][0] == "ok"

    ln.start()  # the same data dir, stale ready files, frame rings and WAL included
    at_restart = count_rows(ln.data_dir)
    wait_for(lambda: count_rows(ln.data_dir) >= at_restart + 60, 60, "parts recorded after the restart")
    time.sleep(0.5)
    ln.stop()

    after = {(r["stream"], r["seq"], r["final"]) for r in db_rows(ln.data_dir, "SELECT stream, seq, final FROM "
                                                                             "inspections")}
    assert committed <= after, f"{len(committed - after)} committed row(s) lost in the power cut"
    assert at_restart >= len(committed)
    streams = _streams(ln.data_dir)
    assert len(streams) == 2
    for seqs in streams.values():  # the cut stream ends where its last commit did; nothing is doubled
        assert seqs == list(range(len(seqs)))
    assert db_rows(ln.data_dir, "PRAGMA integrity_check")[0][0] == "ok"
