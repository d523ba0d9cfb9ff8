"""A real record process: deadline watch, duplicates, late and malformed messages, events."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from linewatch.config import parse_config
from linewatch.messages import (
    KIND_ALARM,
    KIND_ANNOUNCE,
    KIND_VERDICT,
    Alarm,
    Endpoints,
    FrameHeader,
    Verdict,
    now_ns,
)
from linewatch.supervisor import prepare_run_dir, resolve_paths
from tests.conftest import db_rows, wait_for


class RecordRig:
    def __init__(self, tmp: Path):
        self.cfg = resolve_paths(parse_config({"data_dir": str(tmp), "record": {"deadline_ms": 300}}))
        prepare_run_dir(self.cfg)
        ep = Endpoints(self.cfg.run_dir)
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(self.cfg.run_dir / "metrics")}
        self.proc = subprocess.Popen([sys.executable, "-m", "linewatch", "child", "record", "0",
                                      "--run-dir", str(self.cfg.run_dir)], env=env)
        wait_for(lambda: (self.cfg.run_dir / "ready" / "record").exists(), 30, "record")
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.push = self.ctx.socket(zmq.PUSH)
        self.push.connect(ep.record)
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.subscribe(b"")
        self.sub.connect(ep.events)
        time.sleep(0.3)  # let the subscription reach the publisher

    def header(self, seq: int) -> FrameHeader:
        return FrameHeader("cam0", "s1", seq, f"p{seq}", now_ns(), now_ns(), 4, 4, 1, "uint8", "Mono8")

    def verdict(self, seq: int, final: str = "PASS") -> Verdict:
        h = self.header(seq)
        return Verdict("cam0", "s1", seq, f"p{seq}", final, "model", t_capture_ns=h.t_capture_ns)  # type: ignore[arg-type]

    def rows(self) -> list[Any]:
        return db_rows(self.cfg.data_dir, "SELECT * FROM inspections ORDER BY seq")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.push.close(linger=0)
        self.sub.close(linger=0)
        self.ctx.term()


@pytest.fixture
def rec(tmp_path: Path) -> Iterator[RecordRig]:
    r = RecordRig(tmp_path)
    yield r
    r.close()


def test_announced_frame_without_verdict_fails_by_timeout_and_late_verdict_is_ignored(rec: RecordRig) -> None:
    rec.push.send_multipart([KIND_ANNOUNCE, rec.header(0).to_bytes()])
    rows = wait_for(rec.rows, 5, "the timeout row")
    assert (rows[0]["seq"], rows[0]["final"], rows[0]["decided_by"]) == (0, "FAIL", "timeout")
    assert "no verdict within 300 ms" in json.loads(rows[0]["reasons"])[0]
    rec.push.send_multipart([KIND_VERDICT, rec.verdict(0).to_bytes()])
    rec.push.send_multipart([KIND_VERDICT, rec.verdict(1).to_bytes()])
    wait_for(lambda: len(rec.rows()) == 2, 5, "the second row")
    time.sleep(0.2)
    assert [(r["seq"], r["final"]) for r in rec.rows()] == [(0, "FAIL"), (1, "PASS")]


def test_malformed_messages_are_refused_and_record_keeps_going(rec: RecordRig) -> None:
    for parts in ([b"bogus", b"{}"], [KIND_VERDICT, b"{not json"], [KIND_VERDICT, b'{"camera": "cam0"}'],
                  [KIND_ANNOUNCE], [KIND_ALARM, b'{"source": "x"}']):
        rec.push.send_multipart(parts)
    rec.push.send_multipart([KIND_VERDICT, rec.verdict(5, "FAIL").to_bytes()])
    rows = wait_for(rec.rows, 5, "the good verdict")
    assert [(r["seq"], r["final"]) for r in rows] == [(5, "FAIL")]
    assert rec.proc.poll() is None


def test_rows_and_alarms_are_published_after_commit(rec: RecordRig) -> None:
    rec.push.send_multipart([KIND_ALARM, Alarm("test", "demo", "something happened").to_bytes()])
    rec.push.send_multipart([KIND_VERDICT, rec.verdict(9, "REVIEW").to_bytes()])
    seen: dict[bytes, Any] = {}
    while len(seen) < 2:
        assert rec.sub.poll(5000), f"only got {list(seen)}"
        kind, payload = rec.sub.recv_multipart()
        seen[kind] = json.loads(payload)
    assert seen[b"verdict"]["seq"] == 9 and seen[b"verdict"]["final"] == "REVIEW"
    assert seen[b"alarm"]["kind"] == "demo"
    alarms = db_rows(rec.cfg.data_dir, "SELECT * FROM alarms")
    assert [a["message"] for a in alarms] == ["something happened"]
