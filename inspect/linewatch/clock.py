"""The line's clocks: monotonic time for every deadline and duration, wall-clock time only as a stored fact.

The wall clock is stepped by NTP or PTP (seconds, sometimes hours, after a cold start without a
battery-backed clock); CLOCK_MONOTONIC is never stepped and is one clock for all processes on a host.
So a part's wall-clock time is read once, at capture, together with the monotonic time
(`t_capture_mono_ns` travels with the part); every later timestamp of that part is its capture's
wall-clock time plus the monotonic time since (`part_wall_ns`). Deadlines are monotonic, and a step of
the wall clock while parts are in flight changes no duration and times out no part.

`LINEWATCH_CLOCK_STEP=<at_s>:<step_s>` steps this process's wall clock by `step_s` seconds once the
monotonic clock passes `at_s` seconds: how the tests show a wall-clock step times out no part.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import NamedTuple

mono_ns = time.monotonic_ns


def _wall_clock(step: str | None) -> Callable[[], int]:
    if not step:
        return time.time_ns
    try:
        at_s, step_s = (float(x) for x in step.split(":"))
    except ValueError:
        raise ValueError(f"LINEWATCH_CLOCK_STEP={step!r}: expected <at_s>:<step_s> (monotonic seconds, "
                         "seconds of step)") from None
    at_ns, step_ns = int(at_s * 1e9), int(step_s * 1e9)

    def stepped() -> int:
        return time.time_ns() + (step_ns if time.monotonic_ns() >= at_ns else 0)

    return stepped


now_ns = _wall_clock(os.environ.get("LINEWATCH_CLOCK_STEP"))
"""Wall-clock time (ns since the epoch): when something happened, as a stored fact."""


def part_wall_ns(t_capture_ns: int, t_capture_mono_ns: int | None, mono: int | None = None) -> int:
    """The wall-clock time of a moment in a part's life: its capture's wall time plus the monotonic time
    since (`mono`, default now). A part without a monotonic capture time gets the wall clock."""
    if not t_capture_ns or t_capture_mono_ns is None:
        return now_ns()
    wall = t_capture_ns + ((mono_ns() if mono is None else mono) - t_capture_mono_ns)
    return min(max(wall, 0), _MAX_NS)  # a header's nonsense times still give a time the store can hold


_MAX_NS = 2**63 - 1  # SQLite's largest integer


class Moment(NamedTuple):
    """One instant on both clocks: the wall clock for the record, the monotonic clock for arithmetic."""

    wall_ns: int
    mono_ns: int

    @classmethod
    def now(cls) -> Moment:
        return cls(now_ns(), mono_ns())

    def wall_at(self, mono: int) -> int:
        """The wall-clock time of a later monotonic instant, counted from this moment."""
        return self.wall_ns + (mono - self.mono_ns)
