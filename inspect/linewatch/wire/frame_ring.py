"""Shared-memory frame ring: a camera's pixels cross from acquire to local workers without a copy.

acquire owns one ring per camera stream: a file in /dev/shm (RAM) mapped by every process, holding
`slots` equal slots. A frame is written once into a free slot (by the source's conversion straight
into the slot view, or one copy), its header travels over ZeroMQ with `slot` and `gen`, and the
worker reads the pixels in place, then hands the slot back (`SlotRelease`, batched). Each slot has a
generation stamp in the file, bumped whenever the slot is given to a new frame or taken back from a
worker presumed dead, so a worker that finds the stamp changed after using the pixels knows they may
be mixed and must not decide on them. No free slot: the frame is dropped and recorded, never waited for.
"""

from __future__ import annotations

import hashlib
import logging
import math
import mmap
import os
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from linewatch import metrics
from linewatch.config import InferConfig
from linewatch.wire import DTYPES, Endpoints, FrameHeader, MessageError, SlotRelease, decode_frame

log = logging.getLogger("frame_ring")
MAGIC = b"LWRING02"
_PAGE = 4096
_SHM = Path("/dev/shm")


class RingError(Exception):
    """The ring cannot be created or opened (no shared memory, too small, not a ring)."""


def default_slots(infer: InferConfig, workers: int) -> int:
    """Enough slots for every frame that can be queued (acquire's and each of the `workers`' high-water mark),
    every batch in a worker's hands, one being written and one spare."""
    if infer.frame_slots:
        return infer.frame_slots
    return infer.frame_queue * (workers + 1) + workers * infer.max_batch + 2


def ring_path(run_dir: Path, camera: str, stream: str) -> Path:
    """Where a camera stream's ring lives: RAM-backed /dev/shm when there is one, else the run directory."""
    if _SHM.is_dir() and os.access(_SHM, os.W_OK):
        line = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:12]
        return _SHM / f"linewatch-{line}-{camera}-{stream}.ring"
    return run_dir / f"frames-{camera}-{stream}.ring"


def _layout(slots: int, slot_bytes: int) -> tuple[int, int]:
    """(offset of slot 0, bytes per slot), both page-aligned; stamps sit in the header pages."""
    head = -(-(16 + 8 * slots + 8) // _PAGE) * _PAGE
    return head, -(-slot_bytes // _PAGE) * _PAGE


class _Mapped:
    """The file's stamps and slots as numpy views over one mmap."""

    def __init__(self, fd: int, slots: int, slot_bytes: int, writable: bool):
        self.slots, self.slot_bytes = slots, slot_bytes
        self.offset, self.stride = _layout(slots, slot_bytes)
        # MAP_POPULATE: page tables filled once here, so a frame never pays ~1000 page faults on the hot path
        self.mm = mmap.mmap(fd, self.offset + slots * self.stride, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE,
                            prot=mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0))
        self.stamps: np.ndarray = np.ndarray((slots,), np.uint64, self.mm, 24)
        self.base = np.ndarray((self.offset + slots * self.stride,), np.uint8, self.mm)
        self.base_addr = int(self.base.__array_interface__["data"][0])
        self._views: dict[tuple[int, tuple[int, ...], Any], np.ndarray] = {}

    def view(self, slot: int, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """The slot as an array of `shape` (cached: the hot path builds no new array objects)."""
        key = (slot, shape, dtype)
        view = self._views.get(key)
        if view is None:
            if len(self._views) > 4 * self.slots:  # frame sizes keep changing: keep the cache bounded
                self._views.clear()
            start = self.offset + slot * self.stride
            nbytes = math.prod(shape) * np.dtype(dtype).itemsize
            view = self._views[key] = self.base[start:start + nbytes].view(dtype).reshape(shape)
        return view


class FrameRing:
    """acquire's side: owns the file, knows which slots are free and which a worker holds (and since when)."""

    def __init__(self, run_dir: Path, camera: str, stream: str, slots: int, slot_bytes: int,
                 reclaim_after_s: float = 3.0):
        self.path = path = ring_path(run_dir, camera, stream)
        self.camera, self.stream, self.reclaim_after_s = camera, stream, reclaim_after_s
        self.releases: zmq.Socket[Any] | None = None
        self._next_reclaim = 0.0  # reclaim looks at most every 100 ms (or whenever the ring is full)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            offset, stride = _layout(slots, slot_bytes)
            try:  # reserve the memory now: a short /dev/shm must fail here, not as SIGBUS mid-frame
                os.posix_fallocate(fd, 0, offset + slots * stride)
            except OSError as exc:
                os.unlink(path)
                raise RingError(f"frame ring {path}: cannot reserve {(offset + slots * stride) / 1e6:.0f} MB "
                                f"({exc.strerror}); lower infer.frame_slots or use infer.transport: inline") from None
            os.pwrite(fd, MAGIC + np.array([slots, slot_bytes], np.uint64).tobytes(), 0)
            self.map = _Mapped(fd, slots, slot_bytes, writable=True)
        finally:
            os.close(fd)
        self.free: deque[int] = deque(range(slots - 1, -1, -1))  # a stack: the slot freed last is reused
        # first, while its pages are still in the CPU caches
        self.held: dict[int, float] = {}  # slot -> monotonic time it went to the workers

    @property
    def slots(self) -> int:
        return self.map.slots

    def listen(self, ctx: zmq.Context[Any], endpoint: str) -> None:
        """Bind the channel on which workers hand slots back."""
        self.releases = ctx.socket(zmq.PULL)
        self.releases.setsockopt(zmq.LINGER, 0)
        self.releases.bind(endpoint)

    def collect(self) -> None:
        """Take every pending release from the workers, then reclaim slots held too long."""
        while self.releases is not None and int(self.releases.get(zmq.EVENTS)) & zmq.POLLIN:
            raw = self.releases.recv()
            try:
                rel = SlotRelease.from_bytes(raw)
            except MessageError as exc:
                metrics.MESSAGES_REJECTED.labels("acquire", "slot release").inc()
                log.error("rejected slot release: %s", exc)
                continue
            if rel.stream == self.stream:  # releases for an earlier run's ring mean nothing here
                for slot, gen in rel.slots:
                    if slot < self.slots:
                        self.release(slot, gen)
        now = time.monotonic()
        if now < self._next_reclaim and self.free:
            return
        self._next_reclaim = now + 0.1
        taken = self.reclaim(self.reclaim_after_s)
        if taken:
            metrics.FRAME_SLOTS_RECLAIMED.labels(self.camera).inc(taken)
            log.warning("frame ring %s: reclaimed %d slot(s) held over %.1f s by a worker that died or hangs",
                        self.path.name, taken, self.reclaim_after_s)

    def view(self, shape: tuple[int, ...], dtype: Any = np.uint8) -> np.ndarray | None:
        """Where the next frame can be written in place (None: ring full or frame too large). Not taken
        until `place` sees the frame there, so a source may ask and then not deliver."""
        if not self.free:
            self.collect()
        if not self.free or math.prod(shape) * np.dtype(dtype).itemsize > self.map.slot_bytes:
            return None
        return self.map.view(self.free[-1], shape, dtype)

    def place(self, pixels: np.ndarray) -> tuple[int, int] | None:
        """Give `pixels` a slot (copying them in unless a source wrote them there); returns (slot, gen),
        or None when no slot is free. A frame larger than a slot raises RingError."""
        if pixels.nbytes > self.map.slot_bytes:
            raise RingError(f"frame of {pixels.nbytes} bytes does not fit a {self.map.slot_bytes}-byte slot")
        self.collect()
        slot = self._written_in(pixels)
        if slot is not None:  # the source converted straight into this free slot: nothing to copy
            self.free.remove(slot)
        elif not self.free:
            return None
        else:
            slot = self.free.pop()
            np.copyto(self.map.view(slot, pixels.shape, pixels.dtype), pixels)
        self.map.stamps[slot] += 1
        self.held[slot] = time.monotonic()
        return slot, int(self.map.stamps[slot])

    def _written_in(self, pixels: np.ndarray) -> int | None:
        """The free slot whose start `pixels` is a contiguous view of, if any."""
        at = int(pixels.__array_interface__["data"][0]) - self.map.base_addr - self.map.offset
        slot, rest = divmod(at, self.map.stride)
        if at < 0 or rest or slot >= self.slots or slot not in self.free or not pixels.flags.c_contiguous:
            return None
        return slot

    def release(self, slot: int, gen: int) -> bool:
        """A worker is done with `slot`; ignored (False) when the slot was meanwhile reclaimed or reused."""
        if slot not in self.held or int(self.map.stamps[slot]) != gen:
            return False
        del self.held[slot]
        self.free.append(slot)
        return True

    def unsend(self, slot: int) -> None:
        """The frame in `slot` never left acquire (queue full): free the slot at once."""
        self.held.pop(slot, None)
        self.map.stamps[slot] += 1
        self.free.append(slot)

    def reclaim(self, older_than_s: float) -> int:
        """Take back slots held longer than any verdict may take (their worker died or hangs). The stamp
        is bumped first, so a worker still holding one sees its pixels as overwritten."""
        cutoff = time.monotonic() - older_than_s
        overdue = [slot for slot, since in self.held.items() if since < cutoff]
        for slot in overdue:
            self.map.stamps[slot] += 1
            del self.held[slot]
            self.free.append(slot)
        return len(overdue)

    def close(self) -> None:
        if self.releases is not None:
            self.releases.close()
        self.path.unlink(missing_ok=True)


def clear_stale_rings(run_dir: Path, camera: str) -> None:
    """Remove rings an earlier acquire of this camera left behind (killed before it could unlink them);
    workers still mapping one keep their mapping."""
    stale = ring_path(run_dir, camera, "*")
    for path in stale.parent.glob(stale.name):
        path.unlink(missing_ok=True)


class FrameReader:
    """A worker's side: decodes frame messages of either transport, maps each camera's ring once, and
    hands finished slots back to acquire in batches (`flush`)."""

    def __init__(self, ctx: zmq.Context[Any], endpoints: Endpoints):
        self.ctx, self.endpoints = ctx, endpoints
        self._rings: dict[str, tuple[str, _Mapped]] = {}  # camera -> (stream, mapping)
        self._release: dict[str, zmq.Socket[Any]] = {}
        self._done: dict[tuple[str, str], list[tuple[int, int]]] = {}

    def decode(self, parts: list[Any]) -> tuple[FrameHeader, np.ndarray]:
        """Header and a read-only view of the pixels: in the received buffer (inline) or in the ring slot."""
        if len(parts) != 1:
            return decode_frame(parts)
        try:
            header = FrameHeader.from_bytes(bytes(parts[0]))
        except MessageError as exc:
            raise MessageError(f"frame message: expected 2 parts [header, pixels] or a ring slot header; the one "
                               f"part is not a frame header ({exc})") from None
        if header.slot is None or header.gen is None:
            raise MessageError("frame header: field 'slot' is missing (a header without pixels must name its "
                               "ring 'slot' and 'gen')")
        ring = self._ring(header)
        if header.slot >= ring.slots:
            raise MessageError(f"frame header: field 'slot' is {header.slot}, the ring of camera {header.camera} "
                               f"has {ring.slots} slots")
        if header.nbytes > ring.slot_bytes:
            raise MessageError(f"frame header: fields 'width'/'height' give {header.nbytes} bytes, more than a "
                               f"{ring.slot_bytes}-byte ring slot")
        pixels = ring.view(header.slot, header.shape, DTYPES[header.dtype])
        return header, pixels

    def image(self, header: FrameHeader, pixels: np.ndarray) -> Any:
        """Bytes of a kept image for record: a copy when the pixels live in a slot (the slot goes back
        to acquire before record reads them), the received buffer itself when inline."""
        return pixels.tobytes() if header.slot is not None else pixels.data.cast("B")

    def finish(self, header: FrameHeader) -> str | None:
        """Done with a frame: None when its pixels were intact throughout (its slot is queued for
        release), else why they cannot be trusted."""
        if header.slot is None or header.gen is None:
            return None
        stream, ring = self._rings[header.camera]
        now = int(ring.stamps[header.slot])
        if stream != header.stream or now != header.gen:
            return (f"frame slot {header.slot} was reused during inspection (generation {header.gen} -> {now}): "
                    "pixels not trusted")
        self._done.setdefault((header.camera, header.stream), []).append((header.slot, header.gen))
        return None

    def flush(self) -> None:
        """Hand every finished slot back, one message per camera stream."""
        for (camera, stream), slots in self._done.items():
            sock = self._release.get(camera)
            if sock is None:
                sock = self._release[camera] = self.ctx.socket(zmq.PUSH)
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.SNDHWM, 10_000)
                sock.connect(self.endpoints.releases(camera))
            try:
                sock.send(SlotRelease(camera, stream, slots).to_bytes(), flags=zmq.NOBLOCK)
            except zmq.Again:  # acquire is gone or restarting: its new ring starts all free
                log.warning("camera %s is not taking slot releases; %d slot(s) left to its reclaim", camera,
                            len(slots))
        self._done.clear()

    def close(self) -> None:
        for sock in self._release.values():
            sock.close()

    def _ring(self, header: FrameHeader) -> _Mapped:
        """The camera's current ring, mapped once per acquisition stream (a restarted acquire has a new one)."""
        known = self._rings.get(header.camera)
        if known is not None and known[0] == header.stream:
            return known[1]
        path = ring_path(self.endpoints.run_dir, header.camera, header.stream)
        try:
            fd = os.open(path, os.O_RDONLY)
        except (OSError, ValueError) as exc:  # ValueError: a NUL in the camera or stream, which no path holds
            why = exc.strerror if isinstance(exc, OSError) else exc
            raise MessageError(f"frame header: field 'stream' {header.stream!r} names no frame ring for camera "
                               f"{header.camera!r} ({why})") from None
        try:
            head = os.pread(fd, 24, 0)
            if len(head) != 24 or head[:8] != MAGIC:
                raise MessageError(f"frame ring: {path} is not a linewatch frame ring")
            slots, slot_bytes = (int(x) for x in np.frombuffer(head[8:], np.uint64))
            try:
                mapped = _Mapped(fd, slots, slot_bytes, writable=False)
            except (ValueError, OSError) as exc:  # shorter than its header claims: not written by acquire
                raise MessageError(f"frame ring: {path} cannot be mapped ({exc})") from None
        finally:
            os.close(fd)
        self._rings[header.camera] = (header.stream, mapped)
        return mapped
