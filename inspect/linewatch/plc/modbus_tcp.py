"""The Modbus TCP server's edge: a frame that pymodbus would wait on forever or act on wrongly is refused here.

pymodbus 3.16 keeps a frame whose MBAP protocol id is not 0 in its buffer and answers nothing more on that
connection (until 264 bytes have piled up and are dropped, mid-frame); it waits for the rest of a frame
longer than any Modbus frame can be; it takes a write-single-coil value other than 0x0000 or 0xFF00 as ON,
even one with bytes after it, so a malformed pulse would start a command; and it answers a request with an
exception function code (0x80 and up) after logging a traceback. Here a bad MBAP header, or more bytes
waiting than one frame holds (pymodbus would drop them unanswered), closes the connection; a bad
write-single-coil gets exception 3 (illegal data value), as the Modbus spec says, and an exception function
code exception 1 (illegal function). Each is logged naming the field and counted in
`linewatch_messages_rejected_total{process="plc", reason="modbus frame"}`.

Clients are checked against `plc.clients` as they connect: an address not in the list is closed before it
can send anything (logged, counted in `linewatch_plc_clients_refused`); a read-only one gets exception 1 for
every write. The client's address travels with each request (`PEER`) so a command can name its actor.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.pdu import ExceptionResponse
from pymodbus.server import ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler

from linewatch import metrics
from linewatch.config.plc import PlcClient

log = logging.getLogger("plc")

MAX_MBAP_LENGTH = 254  # unit id + the longest PDU (253 bytes)
_WRITE_COIL, _COIL_VALUES = 5, (0x0000, 0xFF00)
_WRITES = {5, 6, 15, 16, 22, 23}  # function codes that write
PEER: ContextVar[str] = ContextVar("modbus_peer", default="?")  # the requesting client's address


def access(clients: list[PlcClient], host: str) -> str | None:
    """What `host` may do (`read`, `read_write`), None when it is not allowed at all: the first entry that
    matches it. An IPv4 client on an IPv6 socket (::ffff:a.b.c.d) is matched as IPv4."""
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for client in clients:
        net = ipaddress.ip_network(client.address, strict=False)
        if ip.version == net.version and ip in net:
            return client.access
    return None


def mbap_problem(data: bytes) -> str | None:
    """What is wrong with the MBAP header at the start of `data`, as far as it has arrived (None: nothing yet)."""
    if len(data) >= 4 and (pid := int.from_bytes(data[2:4], "big")) != 0:
        return f"MBAP protocol id is {pid}, must be 0 (Modbus)"
    if len(data) >= 6 and not 2 <= (length := int.from_bytes(data[4:6], "big")) <= MAX_MBAP_LENGTH:
        return f"MBAP length is {length}, must be 2-{MAX_MBAP_LENGTH} (unit id, function code and data)"
    return None


def coil_value_problem(data: bytes) -> str | None:
    """A complete write-single-coil request whose value is neither OFF (0x0000) nor ON (0xFF00), or whose
    data is not just an address and a value (pymodbus would read a value from the first 4 bytes of any)."""
    if len(data) < 8 or data[7] != _WRITE_COIL:
        return None
    if (length := int.from_bytes(data[4:6], "big")) != 6:
        return f"write single coil: MBAP length is {length}, must be 6 (unit, function, address, value)"
    value = int.from_bytes(data[10:12], "big")
    if value not in _COIL_VALUES:
        return f"write single coil: value is 0x{value:04X}, must be 0x0000 (OFF) or 0xFF00 (ON)"
    return None


class StrictTcpServer(ModbusTcpServer):
    """pymodbus's TCP server with the checks above on every connection; `on_read_only` is called for each write
    refused to a read-only client."""

    def __init__(self, context: Any, clients: list[PlcClient], on_read_only: Callable[[], None],
                 **kwargs: Any) -> None:
        super().__init__(context, **kwargs)
        self.clients, self.on_read_only = clients, on_read_only

    def callback_new_connection(self) -> ServerRequestHandler:
        return _StrictHandler(self, self.trace_packet, self.trace_pdu, self.trace_connect)  # type: ignore[no-untyped-call]


class _StrictHandler(ServerRequestHandler):
    peer, access = "?", None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else "?"
        self.access = access(self.server.clients, self.peer)
        if self.access is None:
            metrics.PLC_CLIENTS_REFUSED.labels(self.peer).inc()
            log.warning("Modbus client %s refused: not in plc.clients; connection closed", self.peer)
            self.close()

    def data_received(self, data: bytes) -> None:
        """Checked before pymodbus buffers it: past its buffer's size it drops what came without a word."""
        if self.access is None:
            return  # a refused client's bytes, arrived before the close took effect
        pending = self.recv_buffer + data
        problem = mbap_problem(pending)
        if problem is None and len(pending) > self.max_buffer_size:
            problem = f"{len(pending)} bytes waiting, more than one frame holds (260): requests are not pipelined"
        if problem is not None:
            _refused(f"{problem}; connection closed")
            self.recv_buffer = b""
            self.close()
            return
        super().data_received(data)

    def callback_data(self, data: bytes, addr: tuple[Any, ...] | None = None) -> int:
        if len(data) < 8 or len(data) < (size := 6 + int.from_bytes(data[4:6], "big")):
            return 0  # the frame is not complete yet
        if data[7] & 0x80:  # pymodbus would decode it as an exception and log a traceback answering it
            return self._answer(data, size, ExcCodes.ILLEGAL_FUNCTION,
                                f"function code 0x{data[7]:02X} is an exception code, not a request")
        problem = coil_value_problem(data)
        if problem is not None:
            return self._answer(data, size, ExcCodes.ILLEGAL_VALUE, problem)
        if data[7] in _WRITES and self.access != "read_write":
            self.server.on_read_only()
            return self._answer(data, size, ExcCodes.ILLEGAL_FUNCTION,
                                f"client {self.peer} may only read (plc.clients)", rejected=False)
        PEER.set(self.peer)  # the request is handled in a callback scheduled from here: it sees this value
        return int(super().callback_data(data, addr))

    def _answer(self, data: bytes, size: int, code: ExcCodes, problem: str, rejected: bool = True) -> int:
        """Refuse the frame at the start of `data` with exception `code`; returns its size (consumed).
        `rejected`: a malformed frame (counted as a rejected message), else a well-formed one refused."""
        if rejected:
            _refused(f"{problem}; answered with exception {int(code)}")
        else:
            log.warning("Modbus request refused: %s", problem)
        self.pdu_send(ExceptionResponse(data[7] & 0x7F, code, device_id=data[6],
                                        transaction=int.from_bytes(data[0:2], "big")))
        return size


def _refused(why: str) -> None:
    metrics.MESSAGES_REJECTED.labels("plc", "modbus frame").inc()
    log.warning("Modbus request refused: %s", why)
