"""The Modbus register map the line offers its PLC: one table, so the server and docs/modbus.md agree.

Addresses are 0-based protocol addresses (a PLC tool counting from 1 shows them one higher).
32-bit values take two registers, high word first (big-endian word order, "ABCD"). Text is ASCII,
two characters per register, first character in the high byte, padded with NUL. A test fails when
a register here is missing from docs/modbus.md.

Version 2 adds, beside every address of version 1 (unchanged), the PLC heartbeat register and a per-camera
vision-system handshake (`HANDSHAKE`, modelled on the smart cameras' Modbus blocks): control coils, status bits,
a job number register and the result registers of the oldest unacknowledged result. Within each table every
address from 0 to the last one assigned can be read (unassigned ones read 0, as PLCs read whole blocks);
writes to unassigned addresses are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from linewatch.wire import LOT_MAX_CHARS

MAP_VERSION = 2
Table = Literal["coil", "discrete", "input", "holding"]

# Status word bits (input register `status`, mirrored one by one on discrete inputs 0-15).
STATUS_BITS = {
    "line_running": 0,  # record, every infer worker and every acquire are up
    "rules_only": 1,  # an infer worker decides on rules alone (model down, faulty or too slow)
    "critical_alarm": 2,  # an unacknowledged critical alarm
    "line_stop_requested": 3,  # latched by a stop alarm (streak); cleared by coil reset_line_stop
    "camera_lost": 4,  # a camera is away (lost, not yet back)
    "disk_low": 5,  # the data disk is below record.disk_low_free_mb (uncleared disk_low alarm)
    "alarm_unacknowledged": 6,  # any unacknowledged alarm, whatever its severity
    "drift": 7,  # a camera's signals drifted from their reference (an unacknowledged drift alarm)
}

VERDICT_CODES = {"PASS": 1, "FAIL": 2, "REVIEW": 3}  # 0: no verdict yet
RESULT_CODES = {**VERDICT_CODES, "not_inspected": 4}  # the handshake's result_code: FAILs nobody inspected get 4
DECIDER_CODES = {"model": 1, "rule": 2, "timeout": 3, "not_inspected": 4}  # 0: no verdict yet
COMMAND_STATES = {"idle": 0, "busy": 1, "done": 2, "failed": 3}
CAMERA_STATES = {"unknown": 0, "streaming": 1, "lost": 2}

# Codes of the `last_error` input register: what went wrong with the PLC's latest request.
ERRORS = {
    "none": 0,
    "bad_address": 1,  # write to an unassigned coil (also answered with exception 2)
    "lot_not_ascii": 2,  # a lot byte outside printable ASCII (also answered with exception 3)
    "lot_invalid": 3,  # commit of an empty lot, one with a NUL inside, or with leading/trailing spaces
    "lot_not_confirmed": 4,  # record refused the lot or did not confirm it in time
    "trigger_mode": 5,  # trigger for a camera not in software-trigger mode (also exception 3)
    "trigger_failed": 6,  # acquire answered but took no frame (the part is recorded as not inspected)
    "trigger_timeout": 7,  # acquire did not answer the trigger in time
    "ack_not_confirmed": 8,  # record did not confirm an alarm acknowledge in time
    "busy": 9,  # a command while the same command is still running (also exception 6)
    "internal": 10,  # a fault inside the plc process, logged (exception 4 when it answered a request)
    "missed_trigger": 11,  # a handshake Trigger edge while Trigger Ready was off (no frame taken)
    "job_unknown": 12,  # Execute Command with a job number no recipe has
    "job_failed": 13,  # the recipe switch was not confirmed (record or a camera did not answer)
    "offline_failed": 14,  # Set Offline (or its release) was not confirmed by a camera or record
    "read_only": 15,  # a write from a client the allow-list gives read access only (also exception 1)
}

# Handshake status bits of camera i: discrete inputs HS_BITS_BASE + 16*i + bit, and input register `hs_status`.
HANDSHAKE_BITS = {
    "online": 0,  # its acquire process runs and inspection is not switched off (Set Offline, HMI pause)
    "trigger_ready": 1,  # Trigger Enable on, online, software trigger, no acquisition or command running
    "trigger_ack": 2,  # the latest Trigger edge was accepted; mirrors the Trigger coil until it is released
    "missed_trigger": 3,  # a Trigger edge came while Trigger Ready was off (latched until Clear Error)
    "busy": 4,  # an acquisition (trigger sent, frame not yet taken) or a command is running
    "inspection_completed": 5,  # toggles on every result of the camera
    "results_valid": 6,  # the result registers hold a result not yet acknowledged (off while Results Ack is on)
    "results_buffer_overrun": 7,  # a result found the queue full and was not queued (latched until Clear Error)
    "command_executing": 8,  # an Execute Command is running
    "command_completed": 9,  # it succeeded (until Execute Command goes low)
    "command_failed": 10,  # it failed (until Execute Command goes low); the reason in `hs_error_code`
    "error": 11,  # `hs_error_code` is not 0 (until Clear Error)
}

LOT_REGISTERS = LOT_MAX_CHARS // 2  # two ASCII characters per register: the longest lot `check_lot` accepts
CAMERA_BASE, CAMERA_STRIDE = 100, 8  # input registers of camera i start at 100 + 8*i
TRIGGER_BASE = 16  # coil 16 + i triggers camera i
HS_COIL_BASE, HS_COIL_STRIDE = 100, 16  # handshake coils of camera i: 100 + 16*i + offset
HS_BITS_BASE, HS_BITS_STRIDE = 100, 16  # handshake status bits of camera i: discrete inputs 100 + 16*i + bit
HS_JOB_BASE = 100  # holding register 100 + i: camera i's job number for Execute Command
HS_INPUT_BASE, HS_INPUT_STRIDE = 1000, 32  # handshake input registers of camera i: 1000 + 32*i + offset
PART_ID_REGISTERS = 16  # the result's part id: 32 ASCII characters (longer ids are cut)

@dataclass(frozen=True)
class Register:
    table: Table
    address: int
    name: str
    size: int  # registers (coils and discrete inputs: bits)
    kind: Literal["bit", "u16", "u32", "ascii", "bits"]
    doc: str

FIXED: tuple[Register, ...] = (
    Register("input", 0, "status", 1, "bits", "Status word; bits listed under *Status word*."),
    Register("input", 1, "heartbeat", 1, "u16", "Counts up every plc.heartbeat_ms (wraps at 65535): "
                                                "a frozen value means the plc process is gone."),
    Register("input", 2, "map_version", 1, "u16", f"Version of this register map ({MAP_VERSION})."),
    Register("input", 3, "cameras", 1, "u16", "Number of configured cameras (camera blocks and trigger coils)."),
    Register("input", 4, "last_error", 1, "u16", "Code of the latest refused or failed PLC request (*Errors*)."),
    Register("input", 5, "error_count", 1, "u16", "Refused or failed PLC requests since the plc started (wraps)."),
    Register("input", 6, "lot_status", 1, "u16", "Latest lot commit: 0 idle, 1 busy, 2 done, 3 failed."),
    Register("input", 7, "ack_status", 1, "u16", "Latest alarm acknowledge: 0 idle, 1 busy, 2 done, 3 failed."),
    Register("input", 10, "count_total", 2, "u32", "Parts recorded in the store (all time)."),
    Register("input", 12, "count_pass", 2, "u32", "Parts recorded PASS."),
    Register("input", 14, "count_fail", 2, "u32", "Parts recorded FAIL (not inspected ones included)."),
    Register("input", 16, "count_review", 2, "u32", "Parts recorded REVIEW."),
    Register("input", 18, "count_not_inspected", 2, "u32", "FAILs decided by `timeout` or `not_inspected`."),
    Register("input", 20, "lot", LOT_REGISTERS, "ascii", "The lot in force (empty before the first lot)."),
    Register("holding", 0, "lot_text", LOT_REGISTERS, "ascii", "The next lot id: write the text, then pulse "
             "coil `commit_lot`. Bytes must be printable ASCII or NUL (else exception 3)."),
    Register("coil", 0, "ack_alarms", 1, "bit", "Rising edge: acknowledge every unacknowledged alarm as `plc`."),
    Register("coil", 1, "reset_line_stop", 1, "bit", "Rising edge: clear the `line_stop_requested` bit."),
    Register("coil", 2, "commit_lot", 1, "bit", "Rising edge: set the lot in `lot_text` (audit actor `plc`)."),
    Register("holding", 32, "plc_heartbeat", 1, "u16", "Written by the PLC, any changing value: when it stops "
             "changing for plc.watchdog_s, a plc_watchdog alarm (and Offline with plc.watchdog_offline)."),
    Register("discrete", 0, "status_bits", 16, "bit", "The status word, bit n on discrete input n."),
)

# The per-camera block: input registers CAMERA_BASE + CAMERA_STRIDE*i + offset, and one trigger coil.
CAMERA_FIELDS: tuple[Register, ...] = (
    Register("input", 0, "verdict", 1, "u16", "Latest verdict: 0 none, 1 PASS, 2 FAIL, 3 REVIEW."),
    Register("input", 1, "verdict_seq", 2, "u32", "Sequence number of that part."),
    Register("input", 3, "decided_by", 1, "u16", "Who decided it: 1 model, 2 a rule, 3 timeout, 4 not inspected."),
    Register("input", 4, "trigger_status", 1, "u16", "Latest software trigger: 0 idle, 1 busy, 2 done, 3 failed."),
    Register("input", 5, "trigger_seq", 2, "u32", "Sequence number the latest trigger's part is recorded under."),
    Register("input", 7, "camera_state", 1, "u16", "0 unknown (acquire not up), 1 streaming, 2 lost."),
    Register("coil", TRIGGER_BASE, "trigger", 1, "bit", "Rising edge: software-trigger the camera (coil 16 + i)."),
)

# The per-camera handshake: addresses are offsets inside camera i's block of each table (`handshake_registers`).
HANDSHAKE: tuple[Register, ...] = (
    Register("coil", 0, "trigger_enable", 1, "bit", "On: the camera accepts Trigger edges (Trigger Ready)."),
    Register("coil", 1, "trigger_request", 1, "bit", "Rising edge: take a part now, when Trigger Ready is on "
             "(else Missed Trigger); Trigger Ack mirrors it until it goes low."),
    Register("coil", 2, "results_buffer_enable", 1, "bit", "On: results queue (plc.results_buffer deep) until "
             "acknowledged; off: the result registers hold the newest result."),
    Register("coil", 3, "results_ack", 1, "bit", "Rising edge: the PLC has read the result registers; the "
             "result is removed and Results Valid goes off until Results Ack goes low again."),
    Register("coil", 4, "execute_command", 1, "bit", "Rising edge: switch the line to the recipe whose job "
             "number is in `job_number` (Command Executing, then Completed or Failed until it goes low)."),
    Register("coil", 5, "set_offline", 1, "bit", "On: the camera's parts are recorded as not inspected, reason "
             "`offline`; off: inspected again."),
    Register("coil", 6, "clear_error", 1, "bit", "Rising edge: clear Error, `hs_error_code`, Missed Trigger and "
             "Results Buffer Overrun."),
    Register("discrete", 0, "hs_status_bits", 16, "bit", "The handshake status bits (*Handshake status bits*)."),
    Register("holding", 0, "job_number", 1, "u16", "Job number of the recipe Execute Command switches to."),
    Register("input", 0, "hs_status", 1, "bits", "The handshake status bits as one word."),
    Register("input", 1, "current_job", 1, "u16", "Job number of the recipe in force (0: a recipe without one)."),
    Register("input", 2, "hs_error_code", 1, "u16", "Code of the camera's latest handshake error (*Errors*)."),
    Register("input", 3, "acquisition_id", 2, "u32", "Sequence number of the latest triggered part (set as "
             "Busy goes off)."),
    Register("input", 5, "inspection_id", 2, "u32", "Sequence number of the part whose result is shown."),
    Register("input", 7, "result_code", 1, "u16", "0 none, 1 PASS, 2 FAIL, 3 REVIEW, 4 not inspected (FAIL)."),
    Register("input", 8, "result_decided_by", 1, "u16", "1 model, 2 a rule, 3 timeout, 4 not inspected."),
    Register("input", 9, "defect_class", 1, "u16", "1 + index of the winning label among the model's labels "
             "(0: no label, e.g. not inspected)."),
    Register("input", 10, "score_x1000", 1, "u16", "Defect score x 1000 (0-1000)."),
    Register("input", 11, "processing_time", 1, "u16", "Capture to verdict, in 0.1 ms (saturates at 65535)."),
    Register("input", 12, "results_queued", 1, "u16", "Results waiting, the one shown included."),
    Register("input", 13, "overrun_count", 1, "u16", "Results not queued because the queue was full (wraps)."),
    Register("input", 14, "missed_trigger_count", 1, "u16", "Trigger edges refused as missed (wraps)."),
    Register("input", 15, "result_job", 1, "u16", "Job number of the recipe the shown result was inspected under."),
    Register("input", 16, "part_id", PART_ID_REGISTERS, "ascii", "The shown result's part id (32 characters)."),
)
HS_BLOCKS: dict[str, tuple[int, int]] = {"coil": (HS_COIL_BASE, HS_COIL_STRIDE), "discrete": (HS_BITS_BASE,
                                        HS_BITS_STRIDE), "holding": (HS_JOB_BASE, 1),
                                        "input": (HS_INPUT_BASE, HS_INPUT_STRIDE)}


def handshake_registers(index: int, table: Table) -> list[Register]:
    """Camera `index`'s handshake fields of `table` at their addresses."""
    base, stride = HS_BLOCKS[table]
    return [Register(f.table, base + stride * index + f.address, f.name, f.size, f.kind, f.doc)
            for f in HANDSHAKE if f.table == table]


def handshake_address(index: int, name: str) -> int:
    """Address of camera `index`'s handshake field `name` (in its own table)."""
    return next(r.address for f in HANDSHAKE if f.name == name for r in handshake_registers(index, f.table)
                if r.name == name)


def fixed(name: str) -> Register:
    return next(r for r in FIXED if r.name == name)

def camera_registers(index: int, table: Table) -> list[Register]:
    """Camera `index`'s fields of `table` at their addresses: input registers in its block, its trigger coil."""
    step = CAMERA_STRIDE if table == "input" else 1
    base = (CAMERA_BASE if table == "input" else 0) + step * index
    return [Register(f.table, base + f.address, f.name, f.size, f.kind, f.doc)
            for f in CAMERA_FIELDS if f.table == table]

def camera_address(index: int, field: str) -> int:
    """Input register of a camera block field (camera `index` in config order)."""
    return next(r.address for r in camera_registers(index, "input") if r.name == field)

def assigned(table: Table, cameras: int) -> list[Register]:
    """Every register of `table` at its address, for a line of `cameras` cameras."""
    return ([r for r in FIXED if r.table == table] + [r for i in range(cameras) for r in camera_registers(i, table)]
            + [r for i in range(cameras) for r in handshake_registers(i, table)])


def extent(table: Table, cameras: int) -> int:
    """Addresses 0 to extent - 1 of `table` can be read (the unassigned ones read 0): what the server offers."""
    return max(r.address + r.size for r in assigned(table, cameras))


def spans(table: Table, cameras: int) -> list[tuple[int, int]]:
    """(first address, count) of each run of addresses the map assigns in `table`."""
    regs = assigned(table, cameras)
    runs: list[tuple[int, int]] = []
    for address in sorted({a for r in regs for a in range(r.address, r.address + r.size)}):
        if runs and sum(runs[-1]) == address:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((address, 1))
    return runs

def encode(reg: Register, value: int | str) -> list[int]:
    """A value as the registers it occupies (`u32`: high word first; `ascii`: padded with NUL)."""
    if reg.kind == "ascii":
        return text_to_registers(str(value), reg.size)
    if reg.kind == "u32":
        return list(u32(int(value)))
    return [int(value) & 0xFFFF]

def u32(value: int) -> tuple[int, int]:
    """High word, low word; counters wrap at 2**32 like a PLC's DINT."""
    value &= 0xFFFF_FFFF
    return value >> 16, value & 0xFFFF

def text_to_registers(text: str, size: int = LOT_REGISTERS) -> list[int]:
    raw = text.encode("ascii", "replace")[: size * 2].ljust(size * 2, b"\0")
    return [raw[i] << 8 | raw[i + 1] for i in range(0, size * 2, 2)]

def registers_to_text(registers: list[int]) -> str:
    """The text up to its first NUL; raises ValueError for bytes other than printable ASCII or NUL."""
    raw = b"".join(r.to_bytes(2, "big") for r in registers)
    bad = [b for b in raw if b and not 0x20 <= b <= 0x7E]
    if bad:
        raise ValueError(f"byte 0x{bad[0]:02x} is not printable ASCII")
    return raw.split(b"\0", 1)[0].decode("ascii")

def ascii_bytes_ok(registers: list[int]) -> bool:
    return all((b == 0 or 0x20 <= b <= 0x7E) for r in registers for b in r.to_bytes(2, "big"))
