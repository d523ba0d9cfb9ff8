"""What the PLC reads: counters, latest verdict per camera, alarms and health, rendered as registers.

Counters start from the store (read once at start) and follow record's verdict events; an event
whose row was already in that first count (recorded at or before the newest row counted) is not
counted twice. Each verdict event also becomes a result of its camera's handshake (`plc/handshake.py`).
The recipe in force and the cameras switched offline come from the audit log, then from its action events.
Alarm state comes from alarm events for speed and from the alarm table for truth (acknowledgements and
cleared conditions are not published as events).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from linewatch.config import LineConfig
from linewatch.operations import recipe_job
from linewatch.plc import register_map as pm
from linewatch.plc.handshake import Handshake, Result
from linewatch.store.queries import current_lot, current_recipe, offline_cameras, open_reader, read_rows
from linewatch.wire.ready import read_ready

COUNTS = ("total", "pass", "fail", "review", "not_inspected")
_NOT_INSPECTED = ("timeout", "not_inspected")
DISK_ALARMS = ("disk_low", "disk_full")  # either sets the disk_low status bit
# The status flags' alarm question, asked every plc.refresh_ms: it reads the store's alarm indexes (schema v7),
# so its cost follows the alarms still open, not every alarm the line ever raised.
ALARM_FLAGS = ("SELECT count(*) AS unack, coalesce(sum(severity = 'critical'), 0) AS critical, "
               "coalesce(sum(kind = 'drift'), 0) AS drift, "
               f"(SELECT count(*) FROM alarms WHERE kind IN {DISK_ALARMS} AND t_cleared_ns IS NULL) AS disk "
               "FROM alarms WHERE acknowledged_by IS NULL")


@dataclass
class CameraView:
    name: str
    software: bool  # cameras[].trigger == software: the PLC may trigger it
    verdict: int = 0
    seq: int = 0
    decided_by: int = 0
    trigger_status: int = 0
    trigger_seq: int = 0
    state: int = 0
    lost: bool = False  # a camera_lost alarm not yet followed by camera_back
    pid: int | None = None  # of its acquire process: a new process starts with a fresh view of the camera


class LineState:
    def __init__(self, cfg: LineConfig):
        self.cfg = cfg
        self.cameras = [CameraView(c.name, c.trigger == "software") for c in cfg.cameras]
        self._by_name = {c.name: c for c in self.cameras}
        self.handshakes = [Handshake(c.name, cfg.plc.results_buffer) for c in cfg.cameras]
        self._hs_by_name = {h.camera: h for h in self.handshakes}
        self.recipe = cfg.recipe
        self.counts = dict.fromkeys(COUNTS, 0)
        self.baseline_ns = 0
        self.lot = ""
        self.heartbeat = self.last_error = self.error_count = self.lot_status = self.ack_status = 0
        self.stop_latched = False
        self.last_alarm_id = 0
        self.flags = dict.fromkeys(("line_running", "rules_only", "critical_alarm", "disk_low",
                                    "alarm_unacknowledged", "drift"), False)
        self._input_blocks = self._make_input_blocks()
        self._alarm_reader: sqlite3.Connection | None = None  # kept open: a fresh one re-reads the schema each time

    def close(self) -> None:
        """Close the kept alarm reader (it opens again on the next refresh)."""
        if self._alarm_reader is not None:
            self._alarm_reader.close()
            self._alarm_reader = None

    def _alarm_rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        """A query of the alarm table on the kept reader (opened once the store exists)."""
        if self._alarm_reader is None:
            try:
                self._alarm_reader = open_reader(self.cfg.data_dir)
                return self._alarm_reader.execute(sql, params).fetchall()
            except sqlite3.OperationalError:
                self.close()
                return []  # no store yet
        return self._alarm_reader.execute(sql, params).fetchall()

    def load_baseline(self) -> None:
        """Counters, latest verdicts, lot and latched alarms as the store has them now."""
        d = self.cfg.data_dir
        for r in read_rows(d, "SELECT final, decided_by IN ('timeout', 'not_inspected') AS lost, count(*) AS n, "
                              "max(t_recorded_ns) AS t FROM inspections GROUP BY 1, 2"):
            self._count(r["final"], bool(r["lost"]), int(r["n"]))
            self.baseline_ns = max(self.baseline_ns, int(r["t"] or 0))
        for r in read_rows(d, "SELECT camera, final, seq, decided_by FROM inspections "
                              "WHERE id IN (SELECT max(id) FROM inspections GROUP BY camera)"):
            self._latest(dict(r))
        try:
            conn = open_reader(d)
            try:
                self.lot = current_lot(conn) or ""
            finally:
                conn.close()
        except sqlite3.OperationalError:
            self.lot = ""  # no store yet
        self.recipe = current_recipe(d) or self.cfg.recipe
        for camera, reason in offline_cameras(d).items():
            if camera in self._hs_by_name:
                self._hs_by_name[camera].offline = reason
        kinds = tuple(self.cfg.plc.stop_alarm_kinds)
        if kinds and read_rows(d, f"SELECT 1 FROM alarms WHERE acknowledged_by IS NULL AND severity = 'critical' "
                                  f"AND kind IN ({', '.join('?' * len(kinds))}) LIMIT 1", kinds):
            self.stop_latched = True  # a stop request the PLC may not have seen before this process restarted
        for cam in self.cameras:
            last = read_rows(d, "SELECT kind FROM alarms WHERE source = ? AND kind IN ('camera_lost', 'camera_back') "
                                "ORDER BY id DESC LIMIT 1", (f"acquire[{cam.name}]",))
            cam.lost = bool(last) and last[0]["kind"] == "camera_lost"
        top = read_rows(d, "SELECT max(id) AS id FROM alarms")
        self.last_alarm_id = int(top[0]["id"] or 0) if top else 0
        self.refresh_processes()
        self.refresh_alarms()

    def _count(self, final: str, lost: bool, n: int) -> None:
        self.counts["total"] += n
        key = final.lower()
        if key in self.counts:
            self.counts[key] += n
        if lost:
            self.counts["not_inspected"] += n

    def _latest(self, row: Mapping[str, Any]) -> None:
        cam = self._by_name.get(str(row["camera"]))
        if cam is None:
            return  # a camera no longer configured
        decided = str(row["decided_by"])
        cam.verdict = pm.VERDICT_CODES.get(str(row["final"]), 0)
        cam.seq = int(row["seq"])
        cam.decided_by = pm.DECIDER_CODES.get("rule" if decided.startswith("rule:") else decided, 0)

    def on_verdict(self, row: Mapping[str, Any]) -> None:
        if int(row["t_recorded_ns"]) <= self.baseline_ns:
            return  # already in the count read at start
        self._count(str(row["final"]), row["decided_by"] in _NOT_INSPECTED, 1)
        self._latest(row)
        hs = self._hs_by_name.get(str(row["camera"]))
        if hs is not None:
            hs.add(Result.of_row(row, recipe_job(self.cfg, str(row["recipe"]))))

    def on_action(self, event: Mapping[str, Any]) -> None:
        """An operator action record committed (from the PLC, the api or the HMI): what the registers show of it."""
        detail = event["detail"]
        if event["action"] == "set_lot":
            self.lot = str(detail["lot"])
        elif event["action"] == "set_recipe":
            self.recipe = str(detail["recipe"])
        elif event["action"] == "set_offline":
            for camera in detail["cameras"]:
                if camera in self._hs_by_name:
                    self._hs_by_name[camera].offline = detail["reason"]

    def online(self, index: int) -> bool:
        """Camera `index` inspects: its acquire runs, the camera streams and nobody switched inspection off."""
        return self.cameras[index].state == pm.CAMERA_STATES["streaming"] and self.handshakes[index].offline is None

    def discrete_inputs(self) -> dict[int, bool]:
        """Every discrete input that is on, by address: the status word's bits, each camera's handshake bits."""
        on = {bit: True for bit in range(16) if self.status_word() >> bit & 1}
        for i, (cam, hs) in enumerate(zip(self.cameras, self.handshakes, strict=True)):
            word = hs.status(self.online(i), cam.software)
            base = pm.handshake_registers(i, "discrete")[0].address
            on.update({base + bit: True for bit in range(16) if word >> bit & 1})
        return on

    def on_alarm(self, alarm: Mapping[str, Any]) -> None:
        """An alarm event (or a row found in the table); each alarm id is applied once."""
        alarm_id = int(alarm["id"])
        if alarm_id <= self.last_alarm_id:
            return
        self.last_alarm_id = alarm_id
        kind, severity, source = str(alarm["kind"]), str(alarm["severity"]), str(alarm["source"])
        self.flags["alarm_unacknowledged"] = True
        if severity == "critical":
            self.flags["critical_alarm"] = True
            if kind in self.cfg.plc.stop_alarm_kinds:
                self.stop_latched = True
        if kind in DISK_ALARMS:
            self.flags["disk_low"] = True
        if kind == "drift":
            self.flags["drift"] = True
        cam = self._by_name.get(source.removeprefix("acquire[").removesuffix("]"))
        if cam is not None and kind in ("camera_lost", "camera_back"):
            cam.lost = kind == "camera_lost"
            cam.state = pm.CAMERA_STATES["lost" if cam.lost else "streaming"]

    def refresh_alarms(self) -> None:
        """Alarms missed as events, then what is unacknowledged or uncleared now."""
        for r in self._alarm_rows("SELECT id, kind, severity, source FROM alarms WHERE id > ? ORDER BY id",
                                  (self.last_alarm_id,)):
            self.on_alarm(dict(r))
        rows = self._alarm_rows(ALARM_FLAGS)
        if rows:
            self.flags["alarm_unacknowledged"] = rows[0]["unack"] > 0
            self.flags["critical_alarm"] = rows[0]["critical"] > 0
            self.flags["drift"] = rows[0]["drift"] > 0
            self.flags["disk_low"] = rows[0]["disk"] > 0

    def refresh_processes(self) -> None:
        """Line health from the ready files the children write (and the supervisor removes when one dies)."""
        infos = read_ready(self.cfg.run_dir)
        workers = [infos.get(f"infer[{i}]") for i in range(self.cfg.cpu_plan.workers)]
        self.flags["rules_only"] = any(w and w.get("rules_only") for w in workers)
        acquires = [infos.get(f"acquire[{c.name}]") for c in self.cameras]
        self.flags["line_running"] = "record" in infos and all(workers) and all(acquires)
        for cam, info in zip(self.cameras, acquires, strict=True):
            if info is None:
                cam.state = pm.CAMERA_STATES["unknown"]
                continue
            if info.get("pid") != cam.pid:
                cam.pid, cam.lost = info.get("pid"), False  # a new acquire alarms again if the camera is away
            away = cam.lost or info.get("camera") == "away"
            cam.state = pm.CAMERA_STATES["lost" if away else "streaming"]

    def status_word(self) -> int:
        bits = {**self.flags, "line_stop_requested": self.stop_latched,
                "camera_lost": any(c.state == pm.CAMERA_STATES["lost"] for c in self.cameras)}
        return sum(1 << pm.STATUS_BITS[name] for name, on in bits.items() if on)

    def input_registers(self, address: int = 0, count: int | None = None) -> dict[int, int]:
        """The input registers by address, as of now, laid out by the map (`plc_map`): every one, or those of
        the blocks that `count` registers from `address` touch (a PLC polling one handshake block at its scan
        rate costs the values of that block only)."""
        last = address + (count if count is not None else 1 << 16)
        regs: dict[int, int] = {}
        for first, end, block, values in self._input_blocks:
            if first < last and address < end:
                regs.update(_layout(block, values()))
        return regs

    def _make_input_blocks(self) -> list[tuple[int, int, list[pm.Register], Callable[[], dict[str, int | str]]]]:
        """(first address, end, registers, their values now) of each block of input registers: the fixed ones,
        each camera's, each handshake's."""
        blocks: list[tuple[list[pm.Register], Callable[[], dict[str, int | str]]]] = [
            ([r for r in pm.FIXED if r.table == "input"], self._fixed_values)]
        for i in range(len(self.cameras)):
            blocks.append((pm.camera_registers(i, "input"), partial(self._camera_values, i)))
            blocks.append((pm.handshake_registers(i, "input"), partial(self._handshake_values, i)))
        return [(min(r.address for r in regs), max(r.address + r.size for r in regs), regs, values)
                for regs, values in blocks]

    def _fixed_values(self) -> dict[str, int | str]:
        return {
            "status": self.status_word(), "heartbeat": self.heartbeat, "map_version": pm.MAP_VERSION,
            "cameras": len(self.cameras), "last_error": self.last_error, "error_count": self.error_count,
            "lot_status": self.lot_status, "ack_status": self.ack_status, "lot": self.lot,
            **{f"count_{name}": n for name, n in self.counts.items()}}

    def _camera_values(self, i: int) -> dict[str, int | str]:
        cam = self.cameras[i]
        return {"verdict": cam.verdict, "verdict_seq": cam.seq, "decided_by": cam.decided_by,
                "trigger_status": cam.trigger_status, "trigger_seq": cam.trigger_seq, "camera_state": cam.state}

    def _handshake_values(self, i: int) -> dict[str, int | str]:
        return self.handshakes[i].values(self.online(i), self.cameras[i].software, recipe_job(self.cfg, self.recipe))


def _layout(registers: list[pm.Register], values: Mapping[str, int | str]) -> dict[int, int]:
    return {address: word for r in registers
            for address, word in enumerate(pm.encode(r, values[r.name]), start=r.address)}
