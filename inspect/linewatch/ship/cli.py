"""`linewatch ship` (the line's results to the central PostgreSQL) and `linewatch fleet` (QA across lines)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

SHIP_HELP = "ship the line's inspections, alarms and audit rows to the central PostgreSQL (ship: in the config)"
FLEET_HELP = "QA across every line in the central PostgreSQL: parts, PASS, FAIL, REVIEW, not inspected"


def _config(args: argparse.Namespace) -> Any:
    from linewatch.config import load_config
    from linewatch.line.supervisor import resolve_paths

    cfg = load_config(args.config)
    if getattr(args, "data_dir", None):
        cfg = cfg.model_copy(update={"data_dir": Path(args.data_dir)})
    return resolve_paths(cfg)


def _cmd_ship(args: argparse.Namespace) -> int:
    from linewatch.line.child import serve, setup_logging, stop_on_signals
    from linewatch.ship.process import Ship

    cfg = _config(args)
    setup_logging("ship")
    stop = stop_on_signals("ship")
    if args.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, addr=args.metrics_host)
    serve(Ship(cfg, 0, stop), cfg.run_dir, "ship", stop)
    return 0


_REPORT = """SELECT line, camera, recipe, sum(parts)::bigint, sum(pass)::bigint, sum(fail)::bigint,
       sum(review)::bigint, sum(not_inspected)::bigint, round(sum(fail)::numeric / sum(parts), 4)::float8,
       max(last_shipped_at)
FROM linewatch_fleet_qa WHERE (%(since)s::timestamptz IS NULL OR day >= date_trunc('day', %(since)s::timestamptz))
GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"""
_COLUMNS = ("line", "camera", "recipe", "parts", "pass", "fail", "review", "not_inspected", "fail_rate",
            "last_shipped_at")


def fleet_report(conn: Any, since: str | None = None) -> list[dict[str, Any]]:
    """One row per line, camera and recipe from the `linewatch_fleet_qa` view (days from `since`, ISO date)."""
    rows = conn.execute(_REPORT, {"since": since}).fetchall()
    return [dict(zip(_COLUMNS, r, strict=True)) for r in rows]


def _cmd_fleet(args: argparse.Namespace) -> int:
    import psycopg

    from linewatch.ship.process import ShipError, connect

    cfg = _config(args)
    try:
        with connect(cfg) as conn:
            rows = fleet_report(conn, args.since)
    except (psycopg.Error, ShipError) as exc:
        print(f"error: {str(exc).strip()}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rows, default=str, indent=2))
        return 0
    widths = [max([len(c)] + [len(str(r[c])) for r in rows]) for c in _COLUMNS]
    for line in [dict(zip(_COLUMNS, _COLUMNS, strict=True)), *rows]:
        print("  ".join(str(line[c]).ljust(w) for c, w in zip(_COLUMNS, widths, strict=True)).rstrip())
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ship = sub.add_parser("ship", help=SHIP_HELP, description=SHIP_HELP)
    ship.add_argument("--config", type=Path, help="the line's YAML config (its ship: section)")
    ship.add_argument("--data-dir", help="override data_dir (the store to ship)")
    ship.add_argument("--metrics-port", type=int, help="serve ship's Prometheus metrics on this port")
    ship.add_argument("--metrics-host", default="127.0.0.1", help="address for --metrics-port")
    ship.set_defaults(func=_cmd_ship)
    fleet = sub.add_parser("fleet", help=FLEET_HELP, description=FLEET_HELP)
    fleet.add_argument("--config", type=Path, help="a YAML config whose ship: section names the central PostgreSQL")
    fleet.add_argument("--since", help="only days from this date on (YYYY-MM-DD, UTC)")
    fleet.add_argument("--json", action="store_true", help="JSON instead of a table")
    fleet.set_defaults(func=_cmd_fleet)
