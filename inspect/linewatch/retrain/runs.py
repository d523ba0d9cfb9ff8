"""The record of each retrain run: a JSON file per run in the data registry, `<registry>/retrain_runs/<id>.json`.

A run's record says what it started from (recipe, base and holdout snapshots, reviewed parts), where it is
(stage, progress, epoch) and how it ended (the snapshot it made, the model, the gate's comparison, promoted or
refused and why). It lives beside the snapshots it names, not in the store: a run is written by the process that
retrains (the CLI, or the one the API starts), which may run with no line and so no record process, and its
progress changes every epoch. Each write replaces the file whole (written aside, then renamed).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RUNS_DIR = "retrain_runs"
#: the stages of a run and the share of its progress each one ends at
STAGES = {"reviews": 0.05, "check": 0.15, "snapshot": 0.2, "train": 0.8, "gate": 0.95, "promote": 1.0}
ENDED = ("promoted", "refused", "failed")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def new_run_id() -> str:
    """Sortable by start time, unique with a random suffix: `20261207T051500Z-3fa9`."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(2)


class RunLog:
    """One run's record, kept on disk as it goes; `listener` hears every change (the CLI's progress bar)."""

    def __init__(self, folder: Path, run_id: str, recipe: str, requested_by: str,
                 listener: Callable[[dict[str, Any]], None] | None = None):
        self.folder, self.id = folder, run_id
        self.path = folder / f"{run_id}.json"
        self.listener = listener
        self.data: dict[str, Any] = {
            "id": run_id, "recipe": recipe, "requested_by": requested_by, "pid": os.getpid(), "state": "running",
            "stage": "reviews", "progress": 0.0, "started": _now(), "finished": None, "message": None}

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        if "stage" in fields and "progress" not in fields:
            stages = list(STAGES)
            i = stages.index(fields["stage"])
            self.data["progress"] = 0.0 if i == 0 else STAGES[stages[i - 1]]
        self._write()

    def epoch(self, done: int, total: int) -> None:
        """Training progress: the train stage's share, in proportion to the epochs run."""
        start, end = STAGES["snapshot"], STAGES["train"]
        self.update(epoch=[done, total], progress=round(start + (end - start) * done / max(total, 1), 4))

    def finish(self, state: str, message: str, **fields: Any) -> dict[str, Any]:
        assert state in ENDED
        self.update(state=state, message=message, finished=_now(), **fields,
                    **({"progress": 1.0} if state == "promoted" else {}))
        return self.data

    def _write(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(self.data, indent=2) + "\n")
        os.replace(tmp, self.path)
        if self.listener is not None:
            self.listener(self.data)


def read_run(folder: Path, run_id: str) -> dict[str, Any] | None:
    """The run's record; one whose process ended without writing an outcome (killed, out of memory) reads as
    failed, saying so."""
    try:
        data: dict[str, Any] = json.loads((folder / f"{run_id}.json").read_text())
    except (OSError, ValueError):
        return None
    if data.get("state") == "running" and not _alive(int(data["pid"])):
        data |= {"state": "failed", "message": f"the run's process ({data['pid']}) ended without an outcome, "
                                               f"during {data['stage']}"}
    return data


def list_runs(folder: Path, limit: int = 50) -> list[dict[str, Any]]:
    """The newest runs first."""
    if not folder.is_dir():
        return []
    names = sorted((f.stem for f in folder.glob("*.json")), reverse=True)[:limit]
    return [r for r in (read_run(folder, n) for n in names) if r is not None]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running(folder: Path) -> dict[str, Any] | None:
    """The run in progress (its record says running and its process lives), if any: one at a time."""
    return next((run for run in list_runs(folder, 20) if run["state"] == "running"), None)
