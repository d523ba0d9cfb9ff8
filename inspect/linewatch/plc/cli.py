"""`linewatch plc map`: the Modbus register map of a line, every address as its cameras make it."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from linewatch.plc import register_map as pm


def map_table(cameras: list[str]) -> str:
    """Every register, coil and input of the map at its address, in markdown, table by table."""
    lines = [f"Modbus register map version {pm.MAP_VERSION}, {len(cameras)} camera(s); 0-based addresses "
             "(docs/modbus.md).", ""]
    titles: dict[pm.Table, str] = {"input": "Input registers (function 4)", "discrete": "Discrete inputs (function 2)",
              "holding": "Holding registers (functions 3, 6, 16)", "coil": "Coils (functions 1, 5, 15)"}
    for table, title in titles.items():
        lines += [f"## {title}", "", "| address | name | camera | type | meaning |", "|---|---|---|---|---|"]
        rows = [(r, "") for r in pm.FIXED if r.table == table]
        for i, name in enumerate(cameras):
            rows += [(r, name) for r in pm.camera_registers(i, table) + pm.handshake_registers(i, table)]
        for r, camera in sorted(rows, key=lambda row: row[0].address):
            where = str(r.address) if r.size == 1 else f"{r.address}-{r.address + r.size - 1}"
            lines.append(f"| {where} | `{r.name}` | {camera} | {r.kind} | {r.doc} |")
        lines += ["", f"Addresses 0-{pm.extent(table, len(cameras)) - 1} can be read; unassigned ones read 0.", ""]
    return "\n".join(lines)


def _cmd_map(args: argparse.Namespace) -> int:
    from linewatch.config import load_config

    cfg = load_config(args.config)
    print(map_table([c.name for c in cfg.cameras]))
    return 0


def add_commands(sub: Any) -> None:
    plc = sub.add_parser("plc", help="the PLC interface (Modbus TCP)")
    plc_sub = plc.add_subparsers(dest="plc_command", required=True)
    show = plc_sub.add_parser("map", help="print the Modbus register map of the line (docs/modbus.md)")
    show.add_argument("--config", type=Path, help="the line's YAML config (its cameras; default: one camera)")
    show.set_defaults(func=_cmd_map)
