"""An operator's action on its way to record, the single writer: send it, then wait for its audit row.

The api (lot, review, acknowledge) and the plc (lot, acknowledge) answer only once record has committed
the audit row carrying the action's `request_id` (`writer.apply_action`); a refused action never gets one.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import zmq

from linewatch.store.queries import read_rows
from linewatch.wire import KIND_ACTION, Endpoints, OperatorAction

_POLL_S = 0.02  # how often the audit table is read while waiting


class ActionNotConfirmed(Exception):
    """record did not commit the action in time (not running, or it refused it)."""


def send_action(endpoints: Endpoints, data_dir: Path, action: OperatorAction, timeout_s: float) -> int:
    """Send `action` to record and wait for its audit row; returns the row id, or raises ActionNotConfirmed."""
    end = _send(endpoints, action, timeout_s)
    while (audit_id := _audit_id(data_dir, action.request_id)) is None:
        if time.monotonic() >= end:
            raise _not_confirmed(action, timeout_s)
        time.sleep(_POLL_S)
    return audit_id


async def send_action_async(endpoints: Endpoints, data_dir: Path, action: OperatorAction, timeout_s: float) -> int:
    """`send_action` for an event loop: the wait sleeps in the loop, not the thread."""
    end = _send(endpoints, action, timeout_s)
    while (audit_id := _audit_id(data_dir, action.request_id)) is None:
        if time.monotonic() >= end:
            raise _not_confirmed(action, timeout_s)
        await asyncio.sleep(_POLL_S)
    return audit_id


def _send(endpoints: Endpoints, action: OperatorAction, timeout_s: float) -> float:
    """Queue the action on a PUSH of its own (a fresh pipe: the send never blocks) and return the monotonic
    deadline for its audit row. LINGER keeps delivering it after the close, as long as the caller waits."""
    ctx: zmq.Context[Any] = zmq.Context.instance()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, int(timeout_s * 1000))
    try:
        sock.connect(endpoints.record)
        sock.send_multipart([KIND_ACTION, action.to_bytes()], flags=zmq.NOBLOCK)
    except zmq.Again:
        raise ActionNotConfirmed("record is not reachable") from None
    finally:
        sock.close()
    return time.monotonic() + timeout_s


def _audit_id(data_dir: Path, request_id: str) -> int | None:
    """The committed audit row of a request, None before (or before the store exists)."""
    try:
        rows = read_rows(data_dir, "SELECT id FROM operator_actions WHERE request_id = ?", [request_id])
    except sqlite3.OperationalError:  # the store being created or migrated: not committed yet
        return None
    return int(rows[0][0]) if rows else None


def _not_confirmed(action: OperatorAction, timeout_s: float) -> ActionNotConfirmed:
    return ActionNotConfirmed(f"record did not confirm the {action.action} within {timeout_s:g} s")
