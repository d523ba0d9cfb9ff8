"""Fleet results (`linewatch ship`): the line's store shipped to a real PostgreSQL started by the test. Through an
outage of the server, a SIGKILL of ship mid-batch and two lines shipping at once, every row arrives exactly
once, and the fleet QA report counts what the lines' stores hold."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlite_utils
import yaml

from linewatch.clock import now_ns
from linewatch.config import ConfigError, parse_config
from linewatch.line.supervisor import prepare_run_dir, resolve_paths
from linewatch.store.rows import verdict_row
from linewatch.store.schema import open_writer
from linewatch.store.writer import apply_action, insert_alarm, insert_verdicts
from linewatch.wire import Alarm, OperatorAction, Verdict
from linewatch.wire.ready import line_children
from tests.conftest import db_rows, free_port, http_text, metric, start_child, wait_for
from tests.pg_harness import Postgres

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pg() -> Iterator[Postgres]:
    server = Postgres()
    yield server
    server.close()


def record(db: sqlite_utils.Database, seqs: range, stream: str = "s1", camera: str = "cam0") -> None:
    """Play record: verdict rows as the line writes them (every 10th a FAIL, every 50th a deadline timeout)."""
    t = now_ns()
    rows = []
    for seq in seqs:
        final, by = ("FAIL", "timeout") if seq % 50 == 7 else ("FAIL", "model") if seq % 10 == 0 else ("PASS", "model")
        v = Verdict(camera=camera, stream=stream, seq=seq, part_id=f"p{seq}", final=final, decided_by=by,  # type: ignore[arg-type]
                    reasons=["deadline"] if by == "timeout" else [], recipe="bracket", score=seq / 1e6,
                    t_capture_ns=t - 10**6, t_decided_ns=t, timings_ms={"inference": 1.5})
        rows.append(verdict_row(v, t, lot="L1", shift="early"))
    insert_verdicts(db, rows)


class Shipper:
    """`linewatch ship` for one line as a real process, its metrics on a port of its own."""

    def __init__(self, tmp: Path, pg: Postgres, line: str, **ship: Any):
        self.data_dir, self.port = tmp / line, free_port()
        self.config = tmp / f"{line}.yaml"
        self.config.write_text(yaml.safe_dump({"line": line, "data_dir": str(self.data_dir), "ship": pg.ship_config(
            interval_s=0.05, retry_backoff_s=[0.2, 0.5], **ship)}))
        self.log = tmp / f"ship-{line}.log"
        self.db = open_writer(self.data_dir)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Shipper:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "linewatch", "ship", "--config", str(self.config),
                                          "--metrics-port", str(self.port)], stdout=log, stderr=subprocess.STDOUT)
        return self

    def metrics(self) -> str:
        """ship's /metrics; empty while it is still starting."""
        try:
            return http_text(f"http://127.0.0.1:{self.port}/metrics")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)
        self.db.close()


@pytest.fixture
def shippers(tmp_path: Path, pg: Postgres) -> Iterator[Any]:
    made: list[Shipper] = []

    def make(line: str, **ship: Any) -> Shipper:
        made.append(Shipper(tmp_path, pg, line, **ship))
        return made[-1]

    yield make
    for s in made:
        if s.proc is not None and s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()
        s.db.close()


def central(pg: Postgres, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    try:
        with pg.connect() as conn:
            return conn.execute(sql, params).fetchall()
    except psycopg.errors.UndefinedTable:  # before ship created the tables: nothing shipped yet
        return []


def shipped(pg: Postgres, line: str) -> int:
    rows = central(pg, "SELECT count(*) FROM linewatch_inspections WHERE line = %s", line)
    return int(rows[0][0]) if rows else 0


def assert_exactly_the_store(pg: Postgres, line: str, data_dir: Path) -> None:
    """PostgreSQL holds each row of the line's store once, as the store has it."""
    for source, target, key in (("inspections", "linewatch_inspections", "camera, stream, seq"),
                                ("alarms", "linewatch_alarms", "id"), ("operator_actions", "linewatch_audit", "id")):
        local = [dict(r) for r in db_rows(data_dir, f"SELECT * FROM {source} ORDER BY id")]
        remote = central(pg, f"SELECT row, count(*) OVER (PARTITION BY {key}) FROM {target} WHERE line = %s "
                             "ORDER BY id", line)
        assert all(n == 1 for _, n in remote), f"{target}: a row arrived twice"
        assert [r for r, _ in remote] == local, f"{target} differs from the store's {source}"


def test_outage_of_postgresql_delays_rows_and_loses_none(pg: Postgres, shippers: Any) -> None:
    s = shippers("press1")
    record(s.db, range(2000))
    for i in range(3):
        insert_alarm(s.db, Alarm(source="record", kind="disk_low", message=f"low {i}"))
    apply_action(s.db, OperatorAction("set_lot", "anna", uuid.uuid4().hex, {"lot": "L1"}))
    s.start()
    wait_for(lambda: shipped(pg, "press1") == 2000, 30, "the first rows in PostgreSQL")

    pg.stop()  # a power cut of the central server
    try:
        record(s.db, range(2000, 3000))
        apply_action(s.db, OperatorAction("ack_alarm", "anna", uuid.uuid4().hex, {"alarm_id": 2}))  # a changed row
        insert_alarm(s.db, Alarm(source="plc", kind="fail_streak", message="3 FAILs", severity="critical"))
        wait_for(lambda: metric(s.metrics(), "linewatch_ship_lag_seconds", table="inspections") > 0.5,
                 15, "the lag to grow while PostgreSQL is down")
        text = s.metrics()
        assert metric(text, "linewatch_ship_connected") == 0
        assert metric(text, "linewatch_ship_errors_total") >= 1
        assert s.proc is not None and s.proc.poll() is None, "ship survives the outage"
    finally:
        pg.start()
    wait_for(lambda: shipped(pg, "press1") == 3000, 30, "the rows held during the outage")
    wait_for(lambda: metric(s.metrics(), "linewatch_ship_lag_seconds") == 0, 10, "the lag back to 0")
    wait_for(lambda: central(pg, "SELECT row->>'acknowledged_by' FROM linewatch_alarms WHERE line = %s AND id = 2",
                             "press1") == [("anna",)], 10, "the acknowledgement")
    s.stop()
    assert_exactly_the_store(pg, "press1", s.data_dir)
    assert pg.password not in s.log.read_text()


def test_ship_killed_mid_batch_resumes_from_its_mark(pg: Postgres, shippers: Any) -> None:
    rows = 12_000
    s = shippers("press2", batch_rows=200)
    record(s.db, range(rows))
    s.start()
    wait_for(lambda: shipped(pg, "press2") >= 1000, 30, "shipping under way")
    wait_for(lambda: central(pg, "SELECT 1 FROM pg_stat_activity WHERE application_name = 'linewatch-ship press2' "
                                 "AND xact_start IS NOT NULL"), 10, "a batch in its transaction", interval=0.001)
    assert s.proc is not None
    s.proc.send_signal(signal.SIGKILL)
    s.proc.wait()
    done = shipped(pg, "press2")
    assert done < rows, "killed before it finished"
    (mark,) = central(pg, "SELECT last_id FROM linewatch_ship_marks WHERE line = %s AND source = 'inspections'",
                      "press2")
    assert mark[0] == done, "the mark covers exactly the rows PostgreSQL holds: no half batch"
    s.start()
    wait_for(lambda: shipped(pg, "press2") == rows, 60, "the rest after the restart")
    s.stop()
    assert_exactly_the_store(pg, "press2", s.data_dir)


def test_two_lines_ship_at_once_and_the_fleet_report_counts_both(pg: Postgres, shippers: Any) -> None:
    lines = [shippers("cell1"), shippers("cell2")]
    record(lines[0].db, range(1500))  # the same camera, stream and seq on both lines: the line is in the key
    record(lines[1].db, range(900))
    for s in lines:
        s.start()
    for s, n in zip(lines, (1500, 900), strict=True):
        wait_for(lambda s=s, n=n: shipped(pg, s.config.stem) == n, 30, f"{s.config.stem}'s rows")
        s.stop()
        assert_exactly_the_store(pg, s.config.stem, s.data_dir)

    out = subprocess.run([sys.executable, "-m", "linewatch", "fleet", "--config", str(lines[0].config), "--json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    report = {r["line"]: r for r in json.loads(out.stdout) if r["line"] in ("cell1", "cell2")}
    for s in lines:
        local = db_rows(s.data_dir, "SELECT count(*) AS parts, sum(final = 'PASS') AS pass, sum(final = 'FAIL') "
                                    "AS fail, sum(decided_by IN ('timeout', 'not_inspected')) AS lost "
                                    "FROM inspections")[0]
        r = report[s.config.stem]
        assert (r["camera"], r["recipe"]) == ("cam0", "bracket")
        assert (r["parts"], r["pass"], r["fail"], r["review"], r["not_inspected"]) == (
            local["parts"], local["pass"], local["fail"], 0, local["lost"])
        assert r["fail_rate"] == round(local["fail"] / local["parts"], 4)


def test_ship_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="retry_backoff_s"):
        parse_config({"ship": {"retry_backoff_s": [5, 1]}})
    with pytest.raises(ConfigError, match=r"ship\.password: unknown field"):
        parse_config({"ship": {"password": "secret"}})


def test_ship_runs_as_a_process_of_the_line(pg: Postgres, tmp_path: Path) -> None:
    """`ship.enabled`: the supervisor starts ship like any child (`linewatch child ship`), its metrics beside the
    line's."""
    cfg = resolve_paths(parse_config({"line": "press9", "data_dir": str(tmp_path),
                                      "ship": {**pg.ship_config(interval_s=0.05), "enabled": True}}))
    assert ("ship", 0) in line_children(cfg)
    prepare_run_dir(cfg)
    db = open_writer(cfg.data_dir)
    record(db, range(300))
    proc = start_child("ship", "ship", cfg)
    try:
        wait_for(lambda: shipped(pg, "press9") == 300, 30, "the line's rows")
        text = multiprocess_metrics(cfg.run_dir / "metrics")
        assert metric(text, "linewatch_ship_rows_total", table="inspections") == 300
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        db.close()
    assert proc.returncode == 0


def multiprocess_metrics(directory: Path) -> str:
    """The metrics the line's api would serve from its multiprocess directory."""
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    return generate_latest(registry).decode()


def test_a_wrong_password_is_refused_counted_and_never_logged(pg: Postgres, shippers: Any, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password-7f3a\n")
    s = shippers("press7", password_file=str(wrong))
    record(s.db, range(10))
    s.start()
    wait_for(lambda: metric(s.metrics(), "linewatch_ship_errors_total", reason="OperationalError") >= 1, 20,
             "the refused login counted")
    assert shipped(pg, "press7") == 0
    s.stop()
    log = s.log.read_text()
    assert "password authentication failed" in log and "not-the-password-7f3a" not in log

    out = subprocess.run([sys.executable, "-m", "linewatch", "fleet", "--config", str(s.config)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "password authentication failed" in out.stderr
    assert "not-the-password-7f3a" not in out.stderr
