"""The plc's Modbus TCP request path fuzzed over a real socket (hypothesis, bounded and derandomized): raw frames
with any function code, address, count and length; truncated, bogus or oversized MBAP headers; writes to
read-only or unassigned registers, values a register does not take.

For each frame: a response (normal, or an exception) comes within a timeout, or the connection is closed
(a bad MBAP header), never silence; the server answers a valid read afterwards; the coils and holding
registers change only by the writes it accepted, and only inside the register map; every exception sent
and every connection refused is counted in the plc's metrics. The expectations are worked out here from the
Modbus spec, not from the server's code.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from pymodbus.client import ModbusTcpClient

from linewatch.config import parse_config
from linewatch.line.supervisor import prepare_run_dir, resolve_paths
from linewatch.plc import register_map as pm
from tests.conftest import free_port, start_child
from tests.fuzz_strategies import fuzz

COILS = [a for start, n in pm.spans("coil", 2) for a in range(start, start + n)]  # 0-2, 16-17, 100-106, 116-122
HOLDING = [a for start, n in pm.spans("holding", 2) for a in range(start, start + n)]  # lot text, heartbeat, jobs
REPLY_S = 3.0  # a loaded CI machine still answers a loopback request well within this


@dataclass
class Plc:
    port: int
    run_dir: Path
    proc: Any
    coils: dict[int, bool] = field(default_factory=lambda: dict.fromkeys(COILS, False))
    holding: dict[int, int] = field(default_factory=lambda: dict.fromkeys(HOLDING, 0))
    exceptions: int = 0  # exception responses received
    refused: int = 0  # frames refused at the server's edge: connection closed, or a malformed request answered
    accepted: int = 0  # writes answered normally


def start_plc(tmp: Path, command_timeout_s: float) -> Plc:
    """The plc process alone (no line around it): cam1 takes software triggers, cam0 runs free; a command
    it starts (trigger, lot, acknowledge) finds no acquire or record and fails after `command_timeout_s`."""
    cfg = resolve_paths(parse_config({
        "data_dir": str(tmp), "plc": {"port": free_port(), "command_timeout_s": command_timeout_s},
        "cameras": [{"name": "cam0"}, {"name": "cam1", "trigger": "software"}]}))
    prepare_run_dir(cfg)
    return Plc(cfg.plc.port, cfg.run_dir, start_child("plc", "plc", cfg))


@pytest.fixture(scope="module")
def plc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plc]:
    p = start_plc(tmp_path_factory.mktemp("fuzz-plc"), command_timeout_s=0.3)
    yield p
    p.proc.terminate()
    p.proc.wait(timeout=10)


# -- frames --

_ADDRESSES = st.one_of(st.sampled_from([*COILS, *HOLDING, 3, 9, 15, 18, 32, 33, 100]), st.integers(0, 0xFFFF))
_COUNTS = st.one_of(st.integers(0, 4), st.sampled_from([32, 33, 123, 124, 125, 126, 2000, 2001]),
                    st.integers(0, 0xFFFF))
_WORDS = st.one_of(st.binary(max_size=70),  # any bytes: mostly not ASCII
                   st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=70).map(str.encode))


@st.composite
def map_writes(draw: st.DrawFn) -> bytes:
    """A well-formed write at or next to the map's coils and lot text: commands, lot bytes, bad values."""
    fc = draw(st.sampled_from([5, 15, 6, 16]))
    if fc == 5:
        address = draw(st.sampled_from([*COILS, 3, 9, 18]))
        return struct.pack(">BHH", fc, address, draw(st.sampled_from([0, 0xFF00, 0xFF00, 1, 0x00FF, 0x1234])))
    if fc == 15:
        address, count = draw(st.sampled_from([0, 1, 2, 15, 16, 17])), draw(st.integers(1, 4))
        return struct.pack(">BHHB", fc, address, count, 1) + draw(st.binary(min_size=1, max_size=1))
    text = draw(_WORDS.filter(lambda b: len(b) >= 2))
    text = text[: len(text) // 2 * 2]
    if fc == 6:
        return struct.pack(">BH", fc, draw(st.sampled_from([*HOLDING, 32, 40]))) + text[:2]
    address = draw(st.integers(0, len(HOLDING) + 2))
    return struct.pack(">BHHB", fc, address, len(text) // 2, len(text)) + text


@st.composite
def pdus(draw: st.DrawFn) -> bytes:
    """A function code and its data: well-formed or not, for the map's addresses or any."""
    if draw(st.integers(0, 4)) < 2:
        return draw(map_writes())
    fc = draw(st.one_of(st.sampled_from([1, 2, 3, 4, 5, 6, 15, 16, 22, 23]), st.integers(0, 255)))
    shape = draw(st.sampled_from(["read", "single", "multiple", "multiple", "mask", "read_write", "raw"]))
    address, count = draw(_ADDRESSES), draw(_COUNTS)
    if shape == "read":
        return struct.pack(">BHH", fc, address, count)
    if shape == "single":
        value = draw(st.one_of(st.sampled_from([0, 0xFF00, 1, 0xFFFF, 0x4142, 0x00FF]), st.integers(0, 0xFFFF)))
        return struct.pack(">BHH", fc, address, value)
    data = draw(_WORDS)
    if fc == 15 and draw(st.booleans()):  # coils, consistent counts
        count = draw(st.integers(1, 8 * max(1, len(data)))) if data else 0
    elif draw(st.booleans()):  # registers, consistent counts
        data = data[: len(data) // 2 * 2]
        count = len(data) // 2
    byte_count = draw(st.sampled_from([len(data) & 0xFF, len(data) & 0xFF, draw(st.integers(0, 255))]))
    if shape == "multiple":
        return struct.pack(">BHHB", fc, address, count, byte_count) + data
    if shape == "mask":
        return struct.pack(">BHHH", fc, address, draw(st.integers(0, 0xFFFF)), draw(st.integers(0, 0xFFFF)))
    if shape == "read_write":
        return struct.pack(">BHHHHB", fc, draw(_ADDRESSES), draw(_COUNTS), address, count, byte_count) + data
    return bytes([fc]) + draw(st.binary(max_size=300))


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """An MBAP frame around a PDU: right, with a bogus protocol id or length, cut short, or oversized."""
    pdu = draw(pdus())
    tid, unit = draw(st.integers(0, 0xFFFF)), draw(st.sampled_from([0, 1, 255]))
    protocol, length = 0, len(pdu) + 1
    how = draw(st.sampled_from(["right"] * 6 + ["protocol", "length", "cut", "padded"]))
    if how == "protocol":
        protocol = draw(st.integers(1, 0xFFFF))
    elif how == "length":
        length = draw(st.one_of(st.integers(0, 1), st.integers(255, 0xFFFF), st.integers(0, 300)))
    frame = struct.pack(">HHHB", tid, protocol, length & 0xFFFF, unit) + pdu
    if how == "cut":
        frame = frame[: draw(st.integers(1, len(frame) - 1))]
    elif how == "padded":
        frame += draw(st.binary(min_size=1, max_size=600))
    return frame


# -- what the spec says happens --

def refused_header(frame: bytes) -> bool:
    """A header the server must not wait on: protocol id not 0, a length no Modbus frame has; or more bytes at
    once than one frame holds (pipelined requests, which the server does not take)."""
    if len(frame) >= 4 and frame[2:4] != b"\0\0":
        return True
    if len(frame) >= 6 and not 2 <= int.from_bytes(frame[4:6], "big") <= 254:
        return True
    return len(frame) > 264


def complete(frame: bytes) -> bool:
    return len(frame) >= 8 and len(frame) >= 6 + int.from_bytes(frame[4:6], "big")


def _read_frame(sock: socket.socket) -> bytes | None:
    """One response frame, or None when the server closed the connection; a timeout fails the test."""
    got = b""
    deadline = time.monotonic() + REPLY_S
    while len(got) < 6 or len(got) < 6 + int.from_bytes(got[4:6], "big"):
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            raise AssertionError(f"no response and no close within {REPLY_S} s (got {got.hex()})") from None
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            assert not got, f"connection closed inside a response frame: {got.hex()}"
            return None
        got += chunk
    return got


def _closes(sock: socket.socket) -> None:
    """After the client's end of stream, the server closes within the timeout (it never keeps waiting)."""
    sock.shutdown(socket.SHUT_WR)
    sock.settimeout(REPLY_S)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"the server kept the connection open {REPLY_S} s after the client's EOF") from None


def _accepted(plc: Plc, request: bytes) -> None:
    """A write the server answered normally: where it went must be in the map; the model takes it."""
    fc, address = request[7], int.from_bytes(request[8:10], "big")
    plc.accepted += fc in (5, 6, 15, 16, 22, 23)
    if fc == 5:
        value = int.from_bytes(request[10:12], "big")
        assert value in (0, 0xFF00), f"coil value 0x{value:04X} accepted"
        assert address in plc.coils, f"write to unassigned coil {address} accepted"
        plc.coils[address] = value == 0xFF00
    elif fc == 15:
        count, data = int.from_bytes(request[10:12], "big"), request[13:]
        for i in range(count):
            assert address + i in plc.coils, f"write to unassigned coil {address + i} accepted"
            plc.coils[address + i] = bool(data[i // 8] >> (i % 8) & 1)
    elif fc in (6, 16, 22, 23):
        if fc == 6:
            words = [int.from_bytes(request[10:12], "big")]
        elif fc == 22:
            and_mask, or_mask = struct.unpack(">HH", request[10:14])
            assert address in plc.holding, f"mask write to unassigned register {address} accepted"
            words = [(plc.holding[address] & and_mask) | (or_mask & ~and_mask & 0xFFFF)]
        else:
            if fc == 23:
                address = int.from_bytes(request[12:14], "big")
            body = request[13:] if fc == 16 else request[17:]
            count = int.from_bytes(request[10:12] if fc == 16 else request[14:16], "big")
            words = [int.from_bytes(body[2 * i: 2 * i + 2], "big") for i in range(count)]
        for i, word in enumerate(words):
            assert address + i in plc.holding, f"write to unassigned register {address + i} accepted"
            if address + i < pm.LOT_REGISTERS:
                assert all(b == 0 or 0x20 <= b <= 0x7E for b in word.to_bytes(2, "big")), f"non-ASCII {word:04X} taken"
            plc.holding[address + i] = word


def _exchange(plc: Plc, frame: bytes) -> None:
    with socket.create_connection(("127.0.0.1", plc.port), timeout=REPLY_S) as sock:
        sock.sendall(frame)
        if refused_header(frame):
            assert _read_frame(sock) is None, "a response to a frame with a bad header"
            plc.refused += 1
            return
        if complete(frame):
            response = _read_frame(sock)
            assert response is not None, f"connection closed instead of an answer to {frame.hex()}"
            assert response[:4] == frame[:2] + b"\0\0", f"response {response.hex()} to {frame.hex()}"
            fc = response[7]
            if fc & 0x80:
                plc.exceptions += 1
                assert response[8] in (1, 2, 3, 4, 6), f"exception code {response[8]}"
                if frame[7] == 5 and (frame[4:6] != b"\0\x06" or frame[10:12] not in (b"\0\0", b"\xff\0")):
                    assert response[8] == 3, "a coil value other than 0x0000/0xFF00 is an illegal data value"
                    plc.refused += 1
                elif frame[7] & 0x80:
                    assert response[8] == 1, "an exception function code is an illegal function"
                    plc.refused += 1
            else:
                assert fc == frame[7], f"response {response.hex()} to {frame.hex()}"
                _accepted(plc, frame)
        _closes(sock)


def _metric(run_dir: Path, name: str, **labels: str) -> float:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(run_dir / "metrics"))  # type: ignore[no-untyped-call]
    return sum(s.value for m in registry.collect() for s in m.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def test_every_frame_is_answered_or_closed_and_only_accepted_writes_change_the_registers(plc: Plc) -> None:
    client = ModbusTcpClient("127.0.0.1", port=plc.port, timeout=REPLY_S, retries=0)
    assert client.connect()

    @fuzz(500)
    @given(frame=frames())
    def one_frame(frame: bytes) -> None:
        _exchange(plc, frame)
        assert plc.proc.poll() is None, "the plc died"
        coils = [b for start, n in pm.spans("coil", 2) for b in client.read_coils(start, count=n).bits[:n]]
        assert dict(zip(COILS, coils, strict=True)) == plc.coils
        holding = [w for start, n in pm.spans("holding", 2)
                   for w in client.read_holding_registers(start, count=n).registers]
        assert dict(zip(HOLDING, holding, strict=True)) == plc.holding

    try:
        one_frame()
    finally:
        client.close()
    assert min(plc.exceptions, plc.refused, plc.accepted) > 20, plc  # the fuzzing reached all three
    assert _metric(plc.run_dir, "linewatch_plc_exceptions_total") == plc.exceptions
    assert _metric(plc.run_dir, "linewatch_messages_rejected_total", process="plc", reason="modbus frame") \
        == plc.refused


def test_the_plc_stops_at_once_while_a_trigger_waits_for_acquire(tmp_path: Path) -> None:
    """Found by the fuzzing: a pulse on a trigger coil left a camera request open, and the plc's stop then
    waited for it (its ZeroMQ context's term) until the supervisor killed it."""
    p = start_plc(tmp_path, command_timeout_s=30)
    client = ModbusTcpClient("127.0.0.1", port=p.port, timeout=REPLY_S, retries=0)
    try:
        assert client.connect()
        assert not client.write_coil(pm.TRIGGER_BASE + 1, True).isError()  # cam1: no acquire to answer
        assert client.read_input_registers(pm.camera_address(1, "trigger_status")).registers == [
            pm.COMMAND_STATES["busy"]]
    finally:
        client.close()
    t0 = time.monotonic()
    p.proc.terminate()
    assert p.proc.wait(timeout=10) == 0 and time.monotonic() - t0 < 3
