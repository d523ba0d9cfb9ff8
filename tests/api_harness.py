"""The web app on a real uvicorn (a thread, loopback only) over a real store, with record as a real child, so
operator actions (lot, review, acknowledge) commit as on a line."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import sqlite_utils
import uvicorn

from linewatch.api.app import create_app
from linewatch.auth.accounts import add_token
from linewatch.config import LineConfig, parse_config
from linewatch.line.supervisor import resolve_paths
from linewatch.store.drift import insert_drift_alarm, save_reference, write_state
from linewatch.store.images import image_relpath, save_kept, save_live
from linewatch.store.rows import verdict_row
from linewatch.store.schema import open_writer
from linewatch.store.writer import insert_alarm, insert_verdicts
from linewatch.wire import Alarm, Verdict
from tests.conftest import RecordRig, free_port, wait_for


def bearer(data_dir: Path, role: str = "admin", name: str | None = None, days: float = 1.0) -> dict[str, str]:
    """Headers that sign a request in as a machine client: a fresh API token of `role` (named `name`, so its audit
    actor is `token:<name>`)."""
    _, token = add_token(data_dir, name or f"test-{role}", role, days, "tests")
    return {"Authorization": f"Bearer {token}"}


def seed_store(data_dir: Path) -> None:
    """Five inspections (ids 1-5; 3 FAIL and 4 REVIEW with kept images), one active alarm (id 1), a live image, and
    cam0's drift reference, detector state and an active drift alarm (id 2) for `/api/drift`."""
    db = open_writer(data_dir)
    rows = []
    for seq, final in enumerate(["PASS", "PASS", "FAIL", "REVIEW", "PASS"]):
        v = Verdict("cam0", "s", seq, f"p{seq}", final, "model", t_capture_ns=1_790_000_000_000_000_000 + seq)  # type: ignore[arg-type]
        if final != "PASS":
            v.image = image_relpath("cam0", "s", seq, final)
            save_kept(data_dir, v.image, np.full((8, 8), seq, np.uint8))
        rows.append(verdict_row(v, 1_790_000_000_000_000_100 + seq))
    insert_verdicts(db, rows)
    insert_alarm(db, Alarm("supervisor", "process_restart", "infer[0] died"))
    _seed_drift(db, 1_790_000_000_000_000_200)
    db.close()
    save_live(data_dir, "cam0", np.zeros((8, 8), np.uint8))


def _seed_drift(db: sqlite_utils.Database, t_ns: int) -> None:
    signal = {"quantiles": [0.1] * 201, "parts": 1000, "source": "learned", "mean": 0.1, "sd": 0.05, "k": 0.125,
              "h_up": 9.0, "h_down": 9.0}
    save_reference(db, "cam0", "", "m", 1000, {"parts": 1000, "centroid": None, "scale": None,
                                              "signals": {"score": signal}}, t_ns)
    write_state(db, t_ns, [{"camera": "cam0", "signal": "score", "recipe": "", "model_hash": "m", "reference": 0.1,
                            "statistic_up": 0.2, "statistic_down": 0.0, "window_parts": 3, "window_mean": 0.2,
                            "in_drift": 1},
                           {"camera": "cam0", "signal": "estimated_defect_rate", "recipe": "", "model_hash": "m",
                            "window_parts": 5, "window_mean": 0.1}])
    text = "drift: camera cam0, model score 0.1 -> 0.2 (+100 %), CUSUM over 3 parts (recipe , reference of ...)"
    alarm_id = insert_alarm(db, Alarm("watch", "drift", text, t_ns=t_ns))
    insert_drift_alarm(db, alarm_id, t_ns, {"camera": "cam0", "recipe": "", "model_hash": "m", "signal": "score",
                                            "direction": "up", "reference": 0.1, "current": 0.2, "window_parts": 3,
                                            "seq": 4})


@contextmanager
def served_api(tmp: Path, api: dict[str, Any] | None = None,
               **sections: Any) -> Iterator[tuple[str, LineConfig]]:
    """(base url, config) of the web app on a seeded store, with record running; stops both on exit. `sections`
    override other parts of the config (e.g. security={...})."""
    seed_store(tmp)
    rig = RecordRig(tmp, {})
    port = free_port()
    cfg = resolve_paths(parse_config({"data_dir": str(tmp), "api": {"port": port, **(api or {})}, **sections}))
    server = uvicorn.Server(uvicorn.Config(create_app(cfg), host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False, timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), 30, "the web app to serve")
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}", cfg
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        rig.close()
        rig.ctx.term()
