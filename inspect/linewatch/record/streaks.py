"""Streak alarms over committed verdicts: many FAILs together suggest a process or camera problem.

Two watches per camera: N FAILs in a row, and the FAIL rate over the last `window` verdicts above
a limit. Each alarms once when it trips and re-arms when the condition clears. With
`request_stop` the alarm is critical and asks for a line stop (the PLC acts on it).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from linewatch.config import StreakConfig
from linewatch.wire import Alarm


@dataclass
class _CameraStreak:
    run: int = 0
    recent: deque[bool] = field(default_factory=deque)
    fails_in_window: int = 0
    run_alarmed: bool = False
    rate_alarmed: bool = False


class StreakWatch:
    def __init__(self, cfg: StreakConfig, source: str = "record"):
        self.cfg, self.source = cfg, source
        self.cameras: dict[str, _CameraStreak] = {}

    def observe(self, rows: Iterable[Mapping[str, Any]]) -> list[Alarm]:
        """Feed committed rows (in commit order); return the alarms they trip."""
        return self.observe_finals((str(r["camera"]), r["final"]) for r in rows)

    def observe_finals(self, finals: Iterable[tuple[str, str]]) -> list[Alarm]:
        """The same from (camera, final) pairs (record's rows are tuples)."""
        alarms = []
        for camera, final in finals:
            alarm = self._one(camera, final == "FAIL")
            if alarm is not None:
                alarms.append(alarm)
        return alarms

    def _one(self, camera: str, failed: bool) -> Alarm | None:
        c, s = self.cfg, self.cameras.setdefault(camera, _CameraStreak())
        s.run = s.run + 1 if failed else 0
        s.recent.append(failed)
        s.fails_in_window += failed
        if len(s.recent) > c.window:
            s.fails_in_window -= s.recent.popleft()
        if s.run == 0:
            s.run_alarmed = False
        rate = s.fails_in_window / len(s.recent)
        if s.rate_alarmed and rate <= c.max_fail_rate:
            s.rate_alarmed = False
        if c.consecutive_fails and s.run >= c.consecutive_fails and not s.run_alarmed:
            s.run_alarmed = True
            return self._alarm("fail_streak", f"camera {camera}: {s.run} FAILs in a row >= threshold "
                                              f"{c.consecutive_fails}")
        if (c.max_fail_rate < 1 and len(s.recent) == c.window and rate > c.max_fail_rate
                and not s.rate_alarmed):
            s.rate_alarmed = True
            return self._alarm("fail_rate", f"camera {camera}: FAIL rate {rate:.3f} over the last {c.window} "
                                            f"parts > threshold {c.max_fail_rate:g}")
        return None

    def _alarm(self, kind: str, message: str) -> Alarm:
        if self.cfg.request_stop:
            return Alarm(self.source, kind, f"{message} (suspected process or camera problem); line stop requested",
                         "critical")
        return Alarm(self.source, kind, f"{message} (suspected process or camera problem)", "warning")
