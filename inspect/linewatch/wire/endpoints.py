"""Where the line's sockets are and what kinds of message travel on record's inbound socket and its events.

The line's own processes meet on `ipc://` files in the runtime directory; remote workers (`infer.remote`) reach
record and each camera's frames over `tcp://` (`tcp_record`, `tcp_frames`, `RemoteEndpoints`).
"""

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


class EndpointError(ValueError):
    """A worker's `--connect` address is not `tcp://HOST:PORT`."""


def tcp_record(host: str, port: int) -> str:
    """record's inbound socket for remote workers (bound beside its ipc:// one)."""
    return f"tcp://{host}:{port}"


def tcp_frames(host: str, port: int, camera_index: int) -> str:
    """Camera `camera_index`'s frames for remote workers: the port after record's, one per camera in config order."""
    return f"tcp://{host}:{port + 1 + camera_index}"


def parse_connect(address: str) -> tuple[str, int]:
    """(host, port) of `tcp://HOST:PORT`, the address a remote worker is given."""
    rest = address.removeprefix("tcp://")
    host, _, port = rest.rpartition(":")
    if rest == address or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise EndpointError(f"--connect: expected tcp://HOST:PORT (the line's infer.remote host and port), "
                            f"got {address!r}")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class RemoteEndpoints(Endpoints):
    """A remote worker's view of the line: frames and record over TCP. `run_dir` is the worker's own (its ready
    file); `cameras` are the line's camera names in config order, which number their frame ports."""

    host: str = "127.0.0.1"
    port: int = 5600
    cameras: tuple[str, ...] = ()

    def frames(self, camera: str) -> str:
        return tcp_frames(self.host, self.port, self.cameras.index(camera))

    @property
    def record(self) -> str:
        return tcp_record(self.host, self.port)
