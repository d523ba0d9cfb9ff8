"""Sockets of the line's channels, their options declared once."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import zmq

from linewatch.wire.control import Alarm
from linewatch.wire.endpoints import KIND_ALARM, Endpoints


class AlarmSender:
    """Pushes alarms to record (the single writer); never blocks the caller."""

    def __init__(self, ctx: zmq.Context[Any], endpoints: Endpoints, source: str):
        self.source = source
        self.sock = ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.SNDHWM, 1000)
        self.sock.setsockopt(zmq.LINGER, 500)
        self.sock.connect(endpoints.record)

    def raise_alarm(self, kind: str, message: str, severity: str = "warning") -> None:
        from linewatch import metrics

        logging.getLogger(self.source).warning("ALARM %s: %s", kind, message)
        metrics.ALARMS.labels(kind).inc()
        alarm = Alarm(source=self.source, kind=kind, message=message, severity=severity)  # type: ignore[arg-type]
        try:
            self.sock.send_multipart([KIND_ALARM, alarm.to_bytes()], flags=zmq.NOBLOCK)
        except zmq.Again:
            logging.getLogger(self.source).error("alarm queue full, alarm only logged: %s", message)

    def close(self) -> None:
        self.sock.close()


class EventFollower:
    """record's event stream, handled on an asyncio loop from the socket's file descriptor: every message
    waiting is handled in one wake-up, without a future per message. (zmq.asyncio's futures and I/O-state
    callbacks cost the plc several times the CPU of decoding the events themselves.)"""

    BURST = 1000  # messages handled before the loop's other work (Modbus requests) gets its turn

    def __init__(self, endpoint: str, handle: Callable[[list[bytes]], None], connect_timeout_s: float = 1.0):
        """Connect and wait (at most `connect_timeout_s`) for the handshake with record's PUB: the subscription
        goes out right behind it (`connected` says whether it came)."""
        self.handle = handle
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.RCVHWM, 100_000)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.subscribe(b"")
        monitor = self.sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        try:
            self.sock.connect(endpoint)
            self.connected = bool(monitor.poll(int(connect_timeout_s * 1000)))
        finally:
            self.sock.disable_monitor()
            monitor.close(linger=0)

    def follow(self) -> asyncio.Task[None]:
        """Handle messages on the running loop from now on; the task ends only when `handle` raises."""
        return asyncio.create_task(self._follow(), name="events")

    async def _follow(self) -> None:
        loop = asyncio.get_running_loop()
        failed: asyncio.Future[None] = loop.create_future()

        def drain() -> None:
            try:
                for _ in range(self.BURST):
                    try:
                        parts = self.sock.recv_multipart(flags=zmq.NOBLOCK)
                    except zmq.Again:
                        return  # drained: the descriptor signals the next arrival
                    self.handle(parts)
                loop.call_soon(drain)  # more waiting, which the descriptor will not signal again
            except Exception as exc:  # a handler's bug ends the task: its owner sees it and exits
                if not failed.done():
                    failed.set_exception(exc)

        fd = int(self.sock.getsockopt(zmq.FD))
        loop.add_reader(fd, drain)
        loop.call_soon(drain)  # what arrived before the reader was added
        try:
            await failed
        finally:
            loop.remove_reader(fd)

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()
