"""Lots and shifts: which lot and which shift a part belongs to.

The current lot is an operator's choice (HMI/REST now, the PLC later), applied by record and kept in
the audit log, so it survives a restart. The shift follows from the capture time and the schedule.
"""

from __future__ import annotations

from datetime import datetime, time, timedelta

from linewatch.config import ShiftConfig


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


def shift_at(shifts: list[ShiftConfig], t_ns: int) -> str:
    """The shift in force at t_ns (local time): the latest start at or before it, wrapping past midnight."""
    return current_shift(shifts, t_ns)[0]


def current_shift(shifts: list[ShiftConfig], t_ns: int) -> tuple[str, int]:
    """The shift in force at t_ns and when it began (ns): the latest start at or before it, wrapping past
    midnight (before the day's first start, the last shift of the day before is still on)."""
    local = datetime.fromtimestamp(t_ns / 1e9).astimezone()
    now = local.hour * 60 + local.minute
    ordered = sorted(shifts, key=lambda s: _minutes(s.start))
    current, day = ordered[-1], local.date() - timedelta(days=1)
    for shift in ordered:
        if _minutes(shift.start) <= now:
            current, day = shift, local.date()
    minutes = _minutes(current.start)
    start = datetime.combine(day, time(minutes // 60, minutes % 60)).astimezone()
    return current.name, int(start.timestamp()) * 1_000_000_000


class ShiftClock:
    """shift_at for record's hot path: the answer is cached per minute of capture time."""

    def __init__(self, shifts: list[ShiftConfig]):
        self.shifts = shifts
        self._minute, self._name = -1, ""

    def at(self, t_ns: int) -> str:
        minute = t_ns // 60_000_000_000
        if minute != self._minute:
            self._minute, self._name = minute, shift_at(self.shifts, t_ns)
        return self._name
