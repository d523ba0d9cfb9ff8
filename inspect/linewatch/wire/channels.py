"""Sockets of the line's channels, their options declared once."""

from __future__ import annotations

import logging
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
