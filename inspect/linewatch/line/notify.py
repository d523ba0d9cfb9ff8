"""The supervisor's side of systemd's service protocol (`Type=notify`, `WatchdogSec=`).

READY=1 goes out once every child serves; WATCHDOG=1 only while every child beats (its ready file is
fresh), so systemd restarts the whole line when a child stays hung or dead longer than `WatchdogSec`
(the supervisor's own restart failed) or the supervisor itself hangs: a watchdog fed from a loop that
only proves the supervisor runs would miss a hung worker. Outside systemd (no NOTIFY_SOCKET) it is silent.
"""

from __future__ import annotations

import logging
import os
import time

import sdnotify

log = logging.getLogger("notify")


class ServiceNotifier:
    """sd_notify messages over NOTIFY_SOCKET (a unix datagram socket, `@` for the abstract namespace)."""

    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._notifier = sdnotify.SystemdNotifier() if self.enabled else None
        usec = os.environ.get("WATCHDOG_USEC", "")
        # systemd's advice: ping at half the timeout; 1 s when the unit sets none (nothing then listens)
        self.interval_s = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else 1.0
        self._last_ping = 0.0
        self._withheld: tuple[str, ...] = ()

    def send(self, *fields: str) -> None:
        if self._notifier is not None:
            self._notifier.notify("\n".join(fields))

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def stopping(self) -> None:
        """The last message: the line stops; the socket is closed."""
        self.send("STOPPING=1", "STATUS=stopping")
        if self._notifier is not None and self._notifier.socket is not None:
            self._notifier.socket.close()
        self._notifier = None

    def beat(self, down: list[str]) -> None:
        """Feed the watchdog when nothing is down; otherwise withhold it and say why in STATUS."""
        if not self.enabled:
            return
        if down:
            if tuple(down) != self._withheld:
                log.warning("systemd watchdog withheld: %s not beating", ", ".join(down))
                self.send(f"STATUS=not beating: {', '.join(down)}")
                self._withheld = tuple(down)
            return
        now = time.monotonic()
        if self._withheld:
            self.send("STATUS=running")
            self._withheld = ()
        elif now - self._last_ping < self.interval_s:
            return
        self.send("WATCHDOG=1")
        self._last_ping = now
