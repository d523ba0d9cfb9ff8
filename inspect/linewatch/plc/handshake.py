"""One camera's vision-system handshake with the PLC: its control coils, status bits and result queue.

Modelled on the smart cameras' Modbus blocks: the PLC enables triggers, pulses Trigger and sees Trigger Ack;
each result of the camera is queued (with Results Buffer Enable; else only the newest is kept) and the result
registers show the oldest one not yet acknowledged. Results Valid is on while they hold one and Results Ack is
low, so after an Ack the PLC sees Valid go off, releases Ack and only then sees the next result: it never reads
a result twice nor a stale one. A full queue never holds the line up: the result is not queued (its row is
recorded all the same), Results Buffer Overrun is set and counted. Registers are rendered per request from this
state, which only the plc's event loop changes, so a read never sees a result half written.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from linewatch import metrics
from linewatch.plc import register_map as pm

COILS = tuple(r.name for r in pm.HANDSHAKE if r.table == "coil")


@dataclass(frozen=True)
class Result:
    """What the result registers show of one part."""

    seq: int
    code: int
    decided_by: int
    defect_class: int
    score_x1000: int
    processing: int  # 0.1 ms
    job: int
    part_id: str

    @classmethod
    def of_row(cls, row: Mapping[str, Any], job: int) -> Result:
        """From a row of record's verdicts event (JSON columns as text)."""
        decided = str(row["decided_by"])
        lost = decided in ("timeout", "not_inspected")
        probs = orjson.loads(row["probs"]) if row.get("probs") else {}
        label = row.get("label")
        score = row.get("score")
        took = (int(row["t_decided_ns"] or 0) - int(row["t_capture_ns"] or 0)) / 1e5
        return cls(
            seq=int(row["seq"]),
            code=pm.RESULT_CODES["not_inspected" if lost else str(row["final"])],
            decided_by=pm.DECIDER_CODES.get("rule" if decided.startswith("rule:") else decided, 0),
            defect_class=list(probs).index(label) + 1 if label in probs else 0,
            score_x1000=min(1000, max(0, round(float(score) * 1000))) if score is not None else 0,
            processing=min(0xFFFF, max(0, round(took))) if row.get("t_capture_ns") else 0,
            job=job, part_id=str(row["part_id"]))


class Handshake:
    def __init__(self, camera: str, depth: int):
        self.camera, self.depth = camera, depth
        self.coils = dict.fromkeys(COILS, False)
        self.queue: deque[Result] = deque()
        self.job_number = 0  # holding register, written by the PLC
        self.offline: str | None = None  # `offline` (PLC) or `paused` (HMI), as the audit log says
        self.acquiring = self.executing = self.completed = self.failed = False
        self.trigger_ack = self.missed = self.overrun = self.toggle = False
        self.error_code = self.acquisition_id = self.overrun_count = self.missed_count = 0
        self.overruns = metrics.PLC_RESULTS_OVERRUN.labels(camera)

    def add(self, result: Result) -> None:
        """A new result of the camera: queued, replacing the queue without buffering, or counted as overrun."""
        self.toggle = not self.toggle
        if not self.coils["results_buffer_enable"]:
            self.queue.clear()
        elif len(self.queue) >= self.depth:
            self.overrun, self.overrun_count = True, (self.overrun_count + 1) & 0xFFFF
            self.overruns.inc()
            return
        self.queue.append(result)

    def valid(self) -> bool:
        return bool(self.queue) and not self.coils["results_ack"]

    def acknowledged(self) -> None:
        """Results Ack rose: the shown result was read (Valid was on, as Ack was low until now)."""
        if self.queue:
            self.queue.popleft()

    def ready(self, online: bool, software: bool) -> bool:
        return self.coils["trigger_enable"] and online and software and not (self.acquiring or self.executing)

    def missed_trigger(self) -> None:
        self.missed, self.missed_count = True, (self.missed_count + 1) & 0xFFFF
        self.error(pm.ERRORS["missed_trigger"])

    def error(self, code: int) -> None:
        self.error_code = code

    def clear_error(self) -> None:
        self.error_code, self.missed, self.overrun = 0, False, False

    def status(self, online: bool, software: bool) -> int:
        bits = {"online": online, "trigger_ready": self.ready(online, software), "trigger_ack": self.trigger_ack,
                "missed_trigger": self.missed, "busy": self.acquiring or self.executing,
                "inspection_completed": self.toggle, "results_valid": self.valid(),
                "results_buffer_overrun": self.overrun, "command_executing": self.executing,
                "command_completed": self.completed, "command_failed": self.failed, "error": self.error_code != 0}
        return sum(1 << pm.HANDSHAKE_BITS[name] for name, on in bits.items() if on)

    def values(self, online: bool, software: bool, current_job: int) -> dict[str, int | str]:
        """The handshake's input registers by name."""
        shown = self.queue[0] if self.queue else None
        return {
            "hs_status": self.status(online, software), "current_job": current_job, "hs_error_code": self.error_code,
            "acquisition_id": self.acquisition_id, "inspection_id": shown.seq if shown else 0,
            "result_code": shown.code if shown else 0, "result_decided_by": shown.decided_by if shown else 0,
            "defect_class": shown.defect_class if shown else 0, "score_x1000": shown.score_x1000 if shown else 0,
            "processing_time": shown.processing if shown else 0, "results_queued": len(self.queue),
            "overrun_count": self.overrun_count, "missed_trigger_count": self.missed_count,
            "result_job": shown.job if shown else 0, "part_id": shown.part_id if shown else ""}
