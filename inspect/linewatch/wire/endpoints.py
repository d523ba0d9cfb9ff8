"""Where the line's sockets are and what kinds of message travel on record's inbound socket and its events."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Message kinds on record's inbound socket (first frame of each multipart message).
KIND_ANNOUNCE = b"announce"
KIND_VERDICT = b"verdict"
# infer -> record: the verdicts of one batch that carry no image, as one JSON array (`encode_verdict_batch`):
# one message per batch instead of per frame cuts record's per-row cost of receiving and decoding.
KIND_VERDICT_BATCH = b"verdict_batch"
KIND_ALARM = b"alarm"
KIND_ACTION = b"action"  # an operator's action (api -> record, the single writer)
# record's events (PUB): `alarm` and `action` carry one JSON object; `verdicts` one group commit's rows
# (see `encode_verdict_group`): one message per group, not per row, keeps record's publishing cheap.
KIND_VERDICTS = b"verdicts"


@dataclass(frozen=True)
class Endpoints:
    """ZeroMQ addresses of one line. acquire binds `frames(camera)`; record binds `record` and `events`."""

    run_dir: Path

    def frames(self, camera: str) -> str:
        return f"ipc://{self.run_dir / f'frames-{camera}.sock'}"

    def releases(self, camera: str) -> str:
        """PULL socket acquire binds; workers PUSH back the shared-memory slots they are done with."""
        return f"ipc://{self.run_dir / f'releases-{camera}.sock'}"

    def control(self, camera: str) -> str:
        """REP socket acquire binds for commands to its camera (software trigger from api, PLC, tools)."""
        return f"ipc://{self.run_dir / f'control-{camera}.sock'}"

    @property
    def record(self) -> str:
        return f"ipc://{self.run_dir / 'record.sock'}"

    @property
    def events(self) -> str:
        return f"ipc://{self.run_dir / 'events.sock'}"
