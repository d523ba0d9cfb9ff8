"""The handshake's commands, part of the plc process (`process.Plc`): what each handshake coil's edge starts, and
the PLC watchdog. Each runs as a task of the plc's event loop; its outcome shows in the camera's status bits
(`plc/handshake.py`) and, when it fails, in `hs_error_code` and `last_error`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

import zmq.asyncio

from linewatch import metrics
from linewatch.config import LineConfig, PlcConfig
from linewatch.operations import OperationFailed, set_offline, switch_recipe
from linewatch.plc import register_map as pm
from linewatch.plc.modbus_tcp import PEER
from linewatch.plc.state import LineState
from linewatch.wire import CameraCommand, Endpoints, MessageError
from linewatch.wire.camera_client import CameraLink, CameraNoAnswer
from linewatch.wire.channels import AlarmSender

log = logging.getLogger("plc")


class HandshakeCommands:
    """The handshake half of `process.Plc`, which provides the attributes and the two methods declared here."""

    cfg: LineConfig
    pc: PlcConfig
    state: LineState
    endpoints: Endpoints
    zctx: zmq.asyncio.Context
    links: dict[str, CameraLink]  # each camera's control socket
    alarms: AlarmSender
    plc_beat: tuple[int, float] | None  # the PLC's heartbeat value and when it last changed
    watchdog_fired: bool

    def _spawn(self, coro: Coroutine[Any, Any, None], command: str) -> None:
        raise NotImplementedError

    def _error(self, name: str) -> None:
        raise NotImplementedError

    def _handshake_coil(self, index: int, name: str, value: bool) -> None:
        """A handshake coil of camera `index` written: edges start what they stand for (`plc/handshake.py`)."""
        hs, cam = self.state.handshakes[index], self.state.cameras[index]
        rising, falling = value and not hs.coils[name], hs.coils[name] and not value
        hs.coils[name] = value
        if name == "trigger_request" and rising:
            if hs.ready(self.state.online(index), cam.software):
                hs.acquiring = hs.trigger_ack = True
                self._spawn(self._handshake_trigger(index), f"handshake_trigger:{index}")
            else:
                hs.missed_trigger()
                self._error("missed_trigger")
        elif name == "trigger_request" and falling:
            hs.trigger_ack = False
        elif name == "results_ack" and rising:
            hs.acknowledged()
        elif name == "execute_command" and rising:
            hs.executing, hs.completed, hs.failed = True, False, False
            self._spawn(self._execute(index, hs.job_number, PEER.get()), f"job:{index}")
        elif name == "execute_command" and falling:
            hs.completed = hs.failed = False
        elif name == "set_offline" and (rising or falling):
            self._spawn(self._set_offline(index, "offline" if value else None, PEER.get()), f"offline:{index}")
        elif name == "clear_error" and rising:
            hs.clear_error()

    async def _handshake_trigger(self, index: int) -> None:
        """Busy until acquire took the part; Acquisition ID is its seq (a part without a frame is recorded as
        not inspected, and is the result the PLC gets)."""
        hs, cam = self.state.handshakes[index], self.state.cameras[index]
        error = None
        try:
            reply = await self.links[cam.name].request(CameraCommand(cmd="trigger"), self.pc.command_timeout_s)
            if reply.seq is not None:
                hs.acquisition_id = reply.seq
            if not reply.ok:
                error = "trigger_failed"
                log.warning("camera %s: handshake trigger took no frame: %s", cam.name, reply.error)
        except (CameraNoAnswer, MessageError) as exc:
            log.warning("%s", exc)
            error = "trigger_timeout" if isinstance(exc, CameraNoAnswer) else "trigger_failed"
        finally:
            hs.acquiring = False
        metrics.PLC_COMMANDS.labels("handshake_trigger", "failed" if error else "done").inc()
        if error:
            hs.error(pm.ERRORS[error])
            self._error(error)

    async def _execute(self, index: int, job: int, peer: str) -> None:
        """Execute Command: switch the line to the recipe of `job` (Executing, then Completed or Failed)."""
        hs = self.state.handshakes[index]
        recipe = next((r.name for r in self.cfg.recipes if r.job == job), None)
        error = "job_unknown" if recipe is None else None
        if recipe is not None:
            try:
                await switch_recipe(self.cfg, recipe, f"plc:{peer}", self.pc.command_timeout_s, self.zctx)
                self.state.recipe = recipe
                log.info("recipe %s (job %d) set by the PLC at %s", recipe, job, peer)
            except OperationFailed as exc:
                log.error("job %d (recipe %s) from the PLC failed: %s", job, recipe, exc)
                error = "job_failed"
        hs.executing, hs.completed, hs.failed = False, error is None, error is not None
        metrics.PLC_COMMANDS.labels("job", "failed" if error else "done").inc()
        if error:
            hs.error(pm.ERRORS[error])
            self._error(error)

    async def _set_offline(self, index: int, reason: str | None, peer: str) -> None:
        """Set Offline (or its release) for camera `index`; Online follows once record has audited it."""
        hs, cam = self.state.handshakes[index], self.state.cameras[index]
        try:
            await set_offline(self.cfg, [cam.name], reason, f"plc:{peer}", self.pc.command_timeout_s, self.zctx)
            hs.offline = reason
            metrics.PLC_COMMANDS.labels("offline", "done").inc()
        except OperationFailed as exc:
            log.error("camera %s: Set Offline %s failed: %s", cam.name, "on" if reason else "off", exc)
            metrics.PLC_COMMANDS.labels("offline", "failed").inc()
            hs.error(pm.ERRORS["offline_failed"])
            self._error("offline_failed")

    async def _watchdog(self) -> None:
        """The PLC's heartbeat register: once written, a value unchanged for plc.watchdog_s raises an alarm (and,
        with plc.watchdog_offline, takes every camera offline until it changes again)."""
        limit = self.pc.watchdog_s
        if not limit:
            await asyncio.Event().wait()  # no watchdog: the loop idles with the others
            return
        names = [c.name for c in self.cfg.cameras]
        while True:
            await asyncio.sleep(min(0.1, limit / 4))
            stale = self.plc_beat is not None and time.monotonic() - self.plc_beat[1] > limit
            if stale == self.watchdog_fired:
                continue
            self.watchdog_fired = stale
            if stale:
                self.alarms.raise_alarm("plc_watchdog", f"the PLC's heartbeat (holding register "
                                        f"{pm.fixed('plc_heartbeat').address}) stopped for {limit:g} s", "critical")
            else:
                self.alarms.raise_alarm("plc_watchdog_back", "the PLC's heartbeat runs again", "info")
            if self.pc.watchdog_offline:
                try:
                    await set_offline(self.cfg, names, "offline" if stale else None, "plc:watchdog",
                                      self.pc.command_timeout_s, self.zctx)
                except OperationFailed as exc:
                    log.error("PLC watchdog could not switch the line %s: %s", "offline" if stale else "online", exc)
