"""The line's clocks: wall-clock time for stored facts (when a part was captured, decided, recorded)."""

from __future__ import annotations

import time


def now_ns() -> int:
    return time.time_ns()
