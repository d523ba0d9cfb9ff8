"""The one lot rule (`wire.check_lot`) and its three doors: the api's lot body, the plc's lot registers and
record's `set_lot` in the store; each refuses what the rule refuses, with the rule's own words."""

from __future__ import annotations

import asyncio
import re
import threading
from pathlib import Path

import pytest
from pydantic import ValidationError

from linewatch.api.qa import LotChange
from linewatch.config import parse_config
from linewatch.plc import register_map as pm
from linewatch.plc.process import Plc
from linewatch.store.schema import open_writer
from linewatch.store.writer import ActionError, apply_action
from linewatch.wire import LOT_MAX_CHARS, LotError, OperatorAction, check_lot

RULE = "lot must be 1-64 characters without leading or trailing spaces or control characters, got {!r}"
LOTS = [
    ("LOT-42/A", True),
    ("A", True),
    ("x" * 64, True),
    ("Charge 7 Ü", True),
    ("two  inner  spaces", True),
    ("", False),
    ("x" * 65, False),
    (" LOT", False),
    ("LOT ", False),
    ("\u00a0LOT", False),  # a no-break space is whitespace too
    ("LOT\t", False),
    ("LO\tT", False),
    ("LO\nT", False),
    ("LO\x00T", False),
    ("LOT\x7f", False),
    (None, False),
    (42, False),
]


@pytest.mark.parametrize(("lot", "ok"), LOTS)
def test_the_lot_rule(lot: object, ok: bool) -> None:
    if ok:
        assert check_lot(lot) == lot
    else:
        with pytest.raises(LotError, match=f"^{re.escape(RULE.format(lot))}$"):
            check_lot(lot)


@pytest.mark.parametrize(("lot", "ok"), [(lot, ok) for lot, ok in LOTS if isinstance(lot, str)])
def test_api_plc_and_store_apply_the_same_rule(lot: str, ok: bool, tmp_path: Path) -> None:
    cfg = parse_config({"data_dir": str(tmp_path), "plc": {"command_timeout_s": 0.05}})
    refusals = []

    # the api: the body of PUT /api/lot and POST /api/lot
    if ok:
        assert LotChange(lot=lot).lot == lot
    else:
        with pytest.raises(ValidationError) as api:
            LotChange(lot=lot)
        refusals.append(api.value.errors()[0]["msg"].removeprefix("Value error, "))

    # the store: record's set_lot
    db = open_writer(tmp_path)
    if ok:
        assert apply_action(db, OperatorAction("set_lot", "op", "r1", {"lot": lot})) > 0
    else:
        with pytest.raises(ActionError) as store:
            apply_action(db, OperatorAction("set_lot", "op", "r1", {"lot": lot}))
        refusals.append(str(store.value).removeprefix("set_lot: "))
    db.close()

    # the plc: lot_text registers, then commit_lot (only printable ASCII or NUL fits its registers)
    if lot.isascii() and len(lot) <= LOT_MAX_CHARS and pm.ascii_bytes_ok(pm.text_to_registers(lot)):
        plc = Plc(cfg, 0, threading.Event())
        plc.lot_text = pm.text_to_registers(lot)
        asyncio.run(plc._commit_lot())
        # a good lot passes the rule and is sent; record is not running here, so it is not confirmed
        assert plc.state.lot_status == pm.COMMAND_STATES["failed"]
        assert plc.state.last_error == pm.ERRORS["lot_not_confirmed" if ok else "lot_invalid"]

    assert refusals == ([] if ok else [RULE.format(lot)] * 2)
