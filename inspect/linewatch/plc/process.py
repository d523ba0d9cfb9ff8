"""plc: the Modbus TCP server the line's PLC polls (status, counters, verdicts) and writes (triggers, lot).

It only follows and asks: the state comes from record's event stream, the workers' ready files and
read-only queries of the alarm table; a trigger goes to acquire's control socket, a lot change or
an alarm acknowledge to record (the single writer) as an operator action by `plc`, a job change or Set
Offline to the line-level operations (`linewatch.operations`) as `plc:<client address>`. A bad request is
answered with a Modbus exception and noted in `last_error`; nothing a PLC writes stops the process.
Only the addresses of `plc.clients` are served (read-only ones get exception 1 for a write).
The register map is in plc/register_map.py and docs/modbus.md; each camera's handshake in plc/handshake.py.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Coroutine
from typing import Any

import orjson
import zmq
import zmq.asyncio
from pymodbus.constants import ExcCodes
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.simulator.simutils import SimUtils

from linewatch import metrics
from linewatch.config import LineConfig
from linewatch.plc import register_map as pm
from linewatch.plc.commands import HandshakeCommands
from linewatch.plc.modbus_tcp import StrictTcpServer
from linewatch.plc.state import LineState
from linewatch.store.actions import ActionNotConfirmed, send_action_async
from linewatch.store.queries import read_rows
from linewatch.wire import (
    KIND_VERDICTS,
    CameraCommand,
    Endpoints,
    LotError,
    MessageError,
    OperatorAction,
    check_lot,
    decode_verdict_group,
)
from linewatch.wire.camera_client import CameraLink, CameraNoAnswer
from linewatch.wire.channels import AlarmSender, EventFollower
from linewatch.wire.ready import mark_ready

log = logging.getLogger("plc")
_READS = {1, 2, 3, 4}
_COIL_WRITES = {5, 15}
SUBSCRIPTION_S = 0.02  # after the handshake with record's PUB: its subscription has arrived and is applied


class PlcError(Exception):
    """The plc process cannot serve (its port is taken or the address is wrong)."""


_ACK, _RESET, _LOT = (pm.fixed(name).address for name in ("ack_alarms", "reset_line_stop", "commit_lot"))
_BUSY = pm.COMMAND_STATES["busy"]


class Plc(HandshakeCommands):
    def __init__(self, cfg: LineConfig, index: int, stop: threading.Event):
        self.cfg, self.stop, self.pc = cfg, stop, cfg.plc
        self.endpoints = Endpoints(cfg.run_dir)
        self.state = LineState(cfg)
        n = len(cfg.cameras)
        self.hs_coils = {r.address: (i, r.name) for i in range(n) for r in pm.handshake_registers(i, "coil")}
        self.coils = {r.address: False for r in pm.assigned("coil", n) if r.address not in self.hs_coils}
        self.jobs = {pm.handshake_registers(i, "holding")[0].address: i for i in range(n)}
        self.lot_text = [0] * pm.LOT_REGISTERS
        self.tasks: set[asyncio.Task[None]] = set()
        self.plc_beat: tuple[int, float] | None = None  # the PLC's heartbeat value and when it last changed
        self.watchdog_fired = False

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except PlcError as exc:
            log.error("%s", exc)
            raise SystemExit(2) from None

    async def _main(self) -> None:
        self.zctx = zmq.asyncio.Context()
        self.link_cameras()
        self.events = EventFollower(self.endpoints.events, self._on_event)
        # The subscription, sent right behind the handshake, reaches record before the baseline is read; a
        # fixed 0.2 s here was the last step before the first frame (acquire waits for the plc).
        await asyncio.sleep(SUBSCRIPTION_S if self.events.connected else 0.2)
        self.state.load_baseline()
        host, port = self.pc.host, self.pc.port
        self.alarms = AlarmSender(zmq.Context.instance(), self.endpoints, "plc")
        server = StrictTcpServer(self._device(), self.pc.clients, lambda: self._error("read_only"),
                                 address=(host, port), trace_connect=_on_connect, trace_pdu=_on_pdu)
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:
            raise PlcError(f"plc: cannot listen on {host}:{port} ({exc}); is the port in use? set plc.port") from None
        mark_ready(self.cfg.run_dir, "plc", modbus=f"{host}:{port}")
        log.info("Modbus TCP server on %s:%d (register map v%d)", host, port, pm.MAP_VERSION)
        loops = [self.events.follow(), asyncio.create_task(self._refresh(), name="refresh"),
                 asyncio.create_task(self._heartbeat(), name="heartbeat"),
                 asyncio.create_task(self._watchdog(), name="watchdog")]
        # Woken by the stop signal or by a loop that ended, not by a timer: an idle line costs no wake-ups here.
        stopping = asyncio.ensure_future(asyncio.to_thread(self.stop.wait))
        try:
            await asyncio.wait([*loops, stopping], return_when=asyncio.FIRST_COMPLETED)
            for task in loops:
                if task.done():  # a loop that ended leaves stale registers: exit, the supervisor restarts us
                    raise PlcError(f"plc: the {task.get_name()} loop stopped: {task.exception()!r}")
        finally:
            self.stop.set()  # also when leaving on an error: the thread waiting for it ends
            tasks = [*loops, *self.tasks]
            for task in tasks:
                task.cancel()
            # A command still waiting on acquire closes its socket as it ends: the context's term waits for it
            await asyncio.gather(*tasks, stopping, return_exceptions=True)
            await server.shutdown()  # type: ignore[no-untyped-call]
            self.alarms.close()
            self.unlink_cameras()
            self.events.close()
            self.state.close()
            self.zctx.term()

    def link_cameras(self) -> None:
        """Each camera's control socket, open for the whole run (`CameraLink`), on this loop's context."""
        self.links = {c.name: CameraLink(self.endpoints, c.name, self.zctx) for c in self.cfg.cameras}

    def unlink_cameras(self) -> None:
        for link in self.links.values():
            link.close()

    def _device(self) -> SimDevice:
        """One block per table, address 0 to the map's last (`register_map.extent`): PLCs read whole blocks, an
        unassigned address reads 0. Values are rendered per request; writes are checked in `_on_request`."""
        n = len(self.cfg.cameras)

        def bits(table: pm.Table) -> list[SimData]:
            return [SimData(0, values=[False] * pm.extent(table, n), datatype=DataType.BITS)]

        def words(table: pm.Table) -> list[SimData]:
            return [SimData(0, count=pm.extent(table, n), values=0, datatype=DataType.REGISTERS)]

        return SimDevice(0, simdata=(bits("coil"), bits("discrete"), words("holding"), words("input")),
                         action=self._on_request)

    # -- requests (called by pymodbus for every read and write, before it answers) --

    async def _on_request(self, fc: int, start: int, address: int, count: int, registers: list[int],
                          values: list[int] | list[bool] | None) -> ExcCodes | None:
        try:
            if values is None:
                if fc in (1, 2, 4):  # coils, discrete inputs and input registers show the state as of now
                    self._render(fc, address, count, registers)
                return None
            if fc in _COIL_WRITES:
                return self._write_coils(address, [bool(v) for v in values])
            return self._write_holding(address, [int(v) for v in values])
        except Exception:  # a fault here must not take the PLC link down: logged, counted, answered
            log.exception("PLC request fc %d at %d failed", fc, address)
            self._error("internal")
            return ExcCodes.DEVICE_FAILURE

    def _render(self, fc: int, address: int, count: int, registers: list[int]) -> None:
        """The requested addresses as of now. Bits lie 16 to a register of the block, bit 0 first (pymodbus's
        layout without bit addressing): the registers under the request are rewritten whole."""
        if fc == 4:
            for addr, value in self.state.input_registers(address, count).items():
                registers[addr] = value
            return
        on = self.state.discrete_inputs() if fc == 2 else self._coil_states()
        first, last = address // 16, (address + count - 1) // 16
        bits = [bool(on.get(a)) for a in range(first * 16, (last + 1) * 16)]
        registers[first: last + 1] = SimUtils.bitsToRegisters(bits)

    def _coil_states(self) -> dict[int, bool]:
        hs = self.state.handshakes
        return {**self.coils, **{a: hs[i].coils[name] for a, (i, name) in self.hs_coils.items()}}

    def _write_holding(self, address: int, values: list[int]) -> ExcCodes | None:
        """Lot text, the PLC's heartbeat or a camera's job number; a write touching anything else is refused."""
        addrs = range(address, address + len(values))
        lot, beat = range(pm.LOT_REGISTERS), pm.fixed("plc_heartbeat").address
        if any(a not in lot and a != beat and a not in self.jobs for a in addrs):
            self._error("bad_address")
            return ExcCodes.ILLEGAL_ADDRESS
        text = [v for a, v in zip(addrs, values, strict=True) if a in lot]
        if not pm.ascii_bytes_ok(text):
            self._error("lot_not_ascii")
            return ExcCodes.ILLEGAL_VALUE
        for a, v in zip(addrs, values, strict=True):
            if a in lot:
                self.lot_text[a] = v
            elif a == beat:
                if self.plc_beat is None or self.plc_beat[0] != v:
                    self.plc_beat = (v, time.monotonic())
            else:
                self.state.handshakes[self.jobs[a]].job_number = v
        return None

    def _write_coils(self, address: int, values: list[bool]) -> ExcCodes | None:
        addrs = range(address, address + len(values))
        if any(a not in self.coils and a not in self.hs_coils for a in addrs):
            self._error("bad_address")
            return ExcCodes.ILLEGAL_ADDRESS
        for a, v in zip(addrs, values, strict=True):
            if a in self.hs_coils and v and self.hs_coils[a][1] == "execute_command":
                hs = self.state.handshakes[self.hs_coils[a][0]]
                if not hs.coils["execute_command"] and hs.executing:
                    self._error("busy")
                    return ExcCodes.DEVICE_BUSY
        rising = [a for a, v in zip(addrs, values, strict=True) if a in self.coils and v and not self.coils[a]]
        for a in rising:  # refuse the whole write before starting any of it
            if a >= pm.TRIGGER_BASE:
                cam = self.state.cameras[a - pm.TRIGGER_BASE]
                if not cam.software:
                    self._error("trigger_mode")
                    return ExcCodes.ILLEGAL_VALUE
                if cam.trigger_status == _BUSY:
                    self._error("busy")
                    return ExcCodes.DEVICE_BUSY
            elif (a == _ACK and self.state.ack_status == _BUSY) or (a == _LOT and self.state.lot_status == _BUSY):
                self._error("busy")
                return ExcCodes.DEVICE_BUSY
        for a, v in zip(addrs, values, strict=True):
            if a in self.hs_coils:
                self._handshake_coil(*self.hs_coils[a], v)
            else:
                self.coils[a] = v
        for a in rising:  # a command is busy from this answer on: a second pulse before its task starts is refused
            if a == _ACK:
                self.state.ack_status = _BUSY
                self._spawn(self._ack_alarms(), "ack")
            elif a == _RESET:
                self.state.stop_latched = False
                log.info("line stop request reset by the PLC")
                metrics.PLC_COMMANDS.labels("reset_line_stop", "done").inc()
            elif a == _LOT:
                self.state.lot_status = _BUSY
                self._spawn(self._commit_lot(), "lot")
            else:
                self.state.cameras[a - pm.TRIGGER_BASE].trigger_status = _BUSY
                self._spawn(self._trigger(a - pm.TRIGGER_BASE), f"trigger:{a - pm.TRIGGER_BASE}")
        return None

    def _spawn(self, coro: Coroutine[Any, Any, None], command: str) -> None:
        task = asyncio.get_running_loop().create_task(self._guarded(coro, command))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _guarded(self, coro: Coroutine[Any, Any, None], command: str) -> None:
        """A command that raises ends as failed (never stuck at busy); the fault is logged and counted."""
        try:
            await coro
        except Exception:  # keeps the PLC link serving; logged and counted, the command shows failed
            log.exception("PLC command %s failed", command)
            failed = pm.COMMAND_STATES["failed"]
            if command.partition(":")[0] in ("handshake_trigger", "job", "offline"):
                hs = self.state.handshakes[int(command.split(":")[1])]
                hs.acquiring = hs.executing = False
                hs.failed = command.startswith("job:")
                hs.error(pm.ERRORS["internal"])
            elif command.startswith("trigger:"):
                self.state.cameras[int(command.split(":")[1])].trigger_status = failed
            else:
                setattr(self.state, f"{command}_status", failed)
            self._error("internal")

    def _error(self, name: str) -> None:
        self.state.last_error = pm.ERRORS.get(name, 0)
        self.state.error_count = (self.state.error_count + 1) & 0xFFFF
        metrics.PLC_ERRORS.labels(name).inc()
        log.warning("PLC request refused or failed: %s", name)

    # -- commands (run in the background; their outcome shows in status registers) --

    async def _trigger(self, index: int) -> None:
        cam = self.state.cameras[index]  # its trigger_status is busy (set by the pulse) until this ends
        try:
            reply = await self.links[cam.name].request(CameraCommand(cmd="trigger"), self.pc.command_timeout_s)
        except CameraNoAnswer as exc:
            log.warning("%s", exc)
            return self._trigger_done(index, None, "trigger_timeout")
        except MessageError as exc:
            log.error("bad trigger reply: %s", exc)
            return self._trigger_done(index, None, "trigger_failed")
        if not reply.ok:
            log.warning("camera %s: trigger took no frame: %s", cam.name, reply.error)
        self._trigger_done(index, reply.seq, None if reply.ok else "trigger_failed")

    def _trigger_done(self, index: int, seq: int | None, error: str | None) -> None:
        cam = self.state.cameras[index]
        if seq is not None:
            cam.trigger_seq = seq
        cam.trigger_status = pm.COMMAND_STATES["failed" if error else "done"]
        metrics.PLC_COMMANDS.labels("trigger", "failed" if error else "done").inc()
        if error:
            self._error(error)

    async def _commit_lot(self) -> None:
        """Runs with `lot_status` busy (set by the pulse); it ends done or failed."""
        raw = b"".join(r.to_bytes(2, "big") for r in self.lot_text)  # printable ASCII or NUL (`_write_lot_text`)
        try:
            lot = check_lot(raw.rstrip(b"\0").decode("ascii"))  # the padding goes, a NUL inside stays and is refused
        except LotError as exc:
            log.warning("lot from the PLC refused: %s", exc)
            return self._command_failed("lot", "lot_invalid")
        ok = await self._send_action(OperatorAction("set_lot", "plc", uuid.uuid4().hex, {"lot": lot}))
        if not ok:
            return self._command_failed("lot", "lot_not_confirmed")
        self.state.lot, self.state.lot_status = lot, pm.COMMAND_STATES["done"]
        metrics.PLC_COMMANDS.labels("lot", "done").inc()
        log.info("lot %s set by the PLC", lot)

    async def _ack_alarms(self) -> None:
        ids = [r[0] for r in read_rows(self.cfg.data_dir, "SELECT id FROM alarms WHERE acknowledged_by IS NULL")]
        sent = [self._send_action(OperatorAction("ack_alarm", "plc", uuid.uuid4().hex, {"alarm_id": i}))
                for i in ids]
        if not all(await asyncio.gather(*sent)):
            return self._command_failed("ack", "ack_not_confirmed")
        self.state.ack_status = pm.COMMAND_STATES["done"]
        metrics.PLC_COMMANDS.labels("ack", "done").inc()
        self.state.refresh_alarms()

    def _command_failed(self, command: str, error: str) -> None:
        setattr(self.state, f"{command}_status", pm.COMMAND_STATES["failed"])
        metrics.PLC_COMMANDS.labels(command, "failed").inc()
        self._error(error)

    async def _send_action(self, action: OperatorAction) -> bool:
        """Send to record; True once its audit row is committed."""
        try:
            await send_action_async(self.endpoints, self.cfg.data_dir, action, self.pc.command_timeout_s)
            return True
        except ActionNotConfirmed as exc:
            log.error("%s %s", exc, action.detail)
            return False

    # -- following the line --

    def _on_event(self, parts: list[bytes]) -> None:
        try:
            if len(parts) != 2:
                raise ValueError(f"{len(parts)} parts")
            kind = parts[0]
            if kind == KIND_VERDICTS:
                for row in decode_verdict_group(parts[1], json_columns=False):
                    self.state.on_verdict(row)
            elif kind == b"alarm":
                self.state.on_alarm(orjson.loads(parts[1]))
            elif kind == b"action":
                self.state.on_action(orjson.loads(parts[1]))
        except (ValueError, KeyError, TypeError) as exc:
            metrics.MESSAGES_REJECTED.labels("plc", "event").inc()
            log.error("unreadable event from record: %s", exc)

    async def _refresh(self) -> None:
        while True:
            self.state.refresh_processes()
            self.state.refresh_alarms()
            await asyncio.sleep(self.pc.refresh_ms / 1e3)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.pc.heartbeat_ms / 1e3)
            self.state.heartbeat = (self.state.heartbeat + 1) & 0xFFFF


def _on_connect(connected: bool) -> None:
    metrics.PLC_CLIENTS.inc() if connected else metrics.PLC_CLIENTS.dec()


def _on_pdu(sending: bool, pdu: ModbusPDU) -> ModbusPDU:
    if not sending:
        metrics.PLC_REQUESTS.labels(str(pdu.function_code)).inc()
    elif isinstance(pdu, ExceptionResponse):
        metrics.PLC_EXCEPTIONS.labels(str(pdu.exception_code)).inc()
    return pdu

