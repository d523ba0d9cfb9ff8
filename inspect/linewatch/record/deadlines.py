"""The deadline watch: every part record has heard of ends as exactly one row.

A part is watched from its announcement (due `deadline_ms` after capture) or from a gap in its
stream's sequence numbers (a part whose messages were lost, e.g. in record's own crash: due
`deadline_ms` after the gap was seen). Its verdict settles it; at its deadline it is due, and record
fails it. Which parts have their row is known per stream as a watermark (every seq up to it) and the
few seqs above it settled out of order, so a late verdict or a re-announcement is not a second row,
in memory that follows the parts in flight, not the parts seen. Deadlines are monotonic nanoseconds
(`clock.py`): the caller passes the time, so the watch is pure and a step of the wall clock times out
nothing.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from linewatch.wire import FrameHeader

Key = tuple[str, str, int]  # (camera, stream, seq): unique across restarts
MAX_SEQ_GAP = 100_000  # skipped seqs watched as lost frames; a bigger jump is reported instead


@dataclass(frozen=True)
class Due:
    """A part whose deadline passed without a verdict: record fails it (`decided_by`, `reason`)."""

    key: Key
    header: FrameHeader | None  # None: never announced (a sequence gap)
    decided_by: str
    reason: str


class DeadlineWatch:
    def __init__(self, deadline_ms: float, last_seq: dict[tuple[str, str], int] | None = None):
        self.deadline_ns = int(deadline_ms * 1e6)
        self.last_seq = dict(last_seq or {})  # highest seq seen per (camera, stream)
        self._pending: dict[Key, tuple[FrameHeader | None, int]] = {}  # not yet decided: (header, due)
        self._heap: list[tuple[int, Key]] = []  # over _pending; entries of settled keys are skipped
        # per stream: every seq up to the watermark has its row unless pending; above it, those in the set
        self._watermark: dict[tuple[str, str], int] = dict(self.last_seq)
        self._above: dict[tuple[str, str], set[int]] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, key: object) -> bool:
        return key in self._pending

    def header(self, key: Key) -> FrameHeader | None:
        entry = self._pending.get(key)
        return entry[0] if entry else None

    def has_row(self, key: Key) -> bool:
        """The part has its row: a verdict for it now is late."""
        if key in self._pending:
            return False
        camera, stream, seq = key
        return seq <= self._watermark.get((camera, stream), -1) or seq in self._above.get((camera, stream), ())

    def seen(self, key: Key, now: int) -> str | None:
        """Note a part's seq; the seqs its stream skipped are watched as lost. Returns what is wrong
        when the jump is too big to be lost frames (a counter reset or a corrupt seq)."""
        camera, stream, seq = key
        last = self.last_seq.get((camera, stream), -1)
        if seq <= last:
            return None
        self.last_seq[(camera, stream)] = seq
        if seq == last + 1:
            return None
        if last >= 0 and seq - last > MAX_SEQ_GAP:  # the numbers between are given up, not watched
            self._watermark[(camera, stream)] = max(self._watermark.get((camera, stream), -1), seq - 1)
            return (f"{camera} stream {stream}: seq jumped from {last} to {seq}; the {seq - last - 1} numbers "
                    "between are not watched as lost frames")
        for missing in range(last + 1, seq):
            lost = (camera, stream, missing)
            if not self.has_row(lost) and lost not in self._pending:
                self._watch(lost, None, now + self.deadline_ns)
        return None

    def lost(self, keys: list[Key], now: int) -> None:
        """Parts known to be missing (holes below a stream's highest stored seq, found when record starts,
        before anything is settled): watched like a sequence gap, so each ends as its verdict if one still
        comes, else a FAIL."""
        for key in keys:
            if key not in self._pending and key[2] not in self._above.get(key[:2], ()):
                self._watch(key, None, now + self.deadline_ns)

    def announced(self, h: FrameHeader, now: int) -> None:
        """Watch an announced part: due `deadline_ms` after its capture (after `now` for a header without
        a monotonic capture time)."""
        key = (h.camera, h.stream, h.seq)
        if not self.has_row(key):
            start = now if h.t_capture_mono_ns is None else min(h.t_capture_mono_ns, now)
            self._watch(key, h, start + self.deadline_ns)

    def settle(self, key: Key) -> bool:
        """The part gets its row now; False if it already has one (a late verdict: ignore it)."""
        if self.has_row(key):
            return False
        self._pending.pop(key, None)
        camera, stream, seq = key
        mark = self._watermark.get((camera, stream), -1)
        if seq > mark:
            above = self._above.setdefault((camera, stream), set())
            above.add(seq)
            while mark + 1 in above:  # contiguous from the watermark: fold into it
                mark += 1
                above.discard(mark)
            self._watermark[(camera, stream)] = mark
            if not above:
                del self._above[(camera, stream)]
        return True

    def due(self, now: int) -> list[Due]:
        """The parts whose deadline passed (the caller records each, settling it); the cost is the number due,
        not the number pending."""
        due, heap = [], self._heap
        while heap and heap[0][0] <= now:
            deadline, key = heapq.heappop(heap)
            entry = self._pending.get(key)
            if entry is None or entry[1] != deadline:
                continue  # settled meanwhile (or watched again with another deadline)
            header = entry[0]
            if header is not None:
                reason = f"no verdict within {self.deadline_ns / 1e6:.0f} ms of capture"
                due.append(Due(key, header, "timeout", reason))
            else:
                due.append(Due(key, None, "not_inspected", "sequence gap: its messages were lost (record restart?)"))
        return due

    def abandon(self, reason: str) -> list[Due]:
        """Every part still pending, to be recorded as not inspected (the line stops; the caller settles each)."""
        return [Due(key, header, "not_inspected", reason) for key, (header, _) in self._pending.items()]

    def _watch(self, key: Key, header: FrameHeader | None, deadline: int) -> None:
        self._pending[key] = (header, deadline)
        heapq.heappush(self._heap, (deadline, key))
