"""`linewatch report` (QA export), `linewatch review export` (labelled dataset for retraining) and
`linewatch drift report` (each signal against its reference, as an HTML page), `linewatch drift relearn`."""

from __future__ import annotations

import argparse
import getpass
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from linewatch.config import load_config
from linewatch.reports.export import FORMATS, Issuer, Query, ReportError, export, parse_time
from linewatch.reports.review_export import export_reviews


def _data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir) if args.data_dir else load_config(args.config).data_dir


DRIFT_DEFAULT_HOURS = 24  # without --from, the drift report covers this much before --to


def _cmd_drift_report(args: argparse.Namespace) -> int:
    from linewatch.reports.drift import DriftQuery, drift_report
    from linewatch.store.drift import latest_capture_ns

    cfg = load_config(args.config)  # the embedded default without --config: its watch window and line name
    data_dir = Path(args.data_dir) if args.data_dir else cfg.data_dir
    try:
        if args.t_to:
            t_to = parse_time(args.t_to, "--to")
        else:  # up to the latest part: a report of a line stopped last week still shows its last day
            latest = latest_capture_ns(data_dir, args.camera)
            t_to = (latest + 1) if latest is not None else int(datetime.now().timestamp() * 1e9)
        t_from = parse_time(args.t_from, "--from") if args.t_from else t_to - DRIFT_DEFAULT_HOURS * 3600 * 10**9
        out = Path(args.out) if args.out else Path(f"linewatch-drift-{datetime.now():%Y%m%d-%H%M%S}.html")
        drift_report(data_dir, DriftQuery(t_from, t_to, args.camera), out, window=cfg.watch.window,
                     reference_parts=cfg.watch.reference_parts, title=cfg.line)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


def _cmd_drift_relearn(args: argparse.Namespace) -> int:
    import uuid

    from linewatch.store.actions import ActionNotConfirmed, send_action
    from linewatch.wire import Endpoints, OperatorAction

    cfg = load_config(args.config)
    if args.camera not in [c.name for c in cfg.cameras]:
        print(f"error: unknown camera {args.camera!r} (known: {', '.join(c.name for c in cfg.cameras)})",
              file=sys.stderr)
        return 2
    action = OperatorAction("drift_relearn", args.actor, uuid.uuid4().hex, {"camera": args.camera})
    try:
        audit_id = send_action(Endpoints(cfg.run_dir), cfg.data_dir, action, 3.0)
    except ActionNotConfirmed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"camera {args.camera}: drift reference learnt again from its next parts (audit id {audit_id})")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)  # the embedded default without --config: the line's name for the header
    try:
        q = Query(parse_time(args.t_from, "--from"), parse_time(args.t_to, "--to"), args.lot, args.camera)
        data_dir = Path(args.data_dir) if args.data_dir else cfg.data_dir
        n = export(data_dir, q, args.format, Path(args.out), Issuer(cfg.line, args.by or getpass.getuser()))
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.out}: {n} inspection(s), {args.format}")
    return 0


def _cmd_review_export(args: argparse.Namespace) -> int:
    try:
        t_from = parse_time(args.t_from, "--from") if args.t_from else 0
        t_to = parse_time(args.t_to, "--to") if args.t_to else 2**63 - 1
        n = export_reviews(_data_dir(args), Path(args.out), t_from, t_to)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.out}: {n} reviewed image(s), manifest.csv")
    return 0


def _store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML config file (for data_dir)")
    p.add_argument("--data-dir", help="the line's data directory (overrides the config)")


def add_commands(sub: Any) -> None:
    rep = sub.add_parser("report", help="QA export of a time window as CSV, JSON or PDF")
    rep.add_argument("--from", dest="t_from", required=True, help="start, ISO 8601 (local time without offset)")
    rep.add_argument("--to", dest="t_to", required=True, help="end (exclusive), ISO 8601")
    rep.add_argument("--lot", help="only this lot")
    rep.add_argument("--camera", help="only this camera")
    rep.add_argument("--format", choices=FORMATS, required=True)
    rep.add_argument("--out", required=True, help="output file")
    rep.add_argument("--by", help="who generates the report, named in the PDF's header (default: the system user)")
    _store_args(rep)
    rep.set_defaults(func=_cmd_report)

    review = sub.add_parser("review", help="operator review decisions")
    review_sub = review.add_subparsers(dest="review_command", required=True)
    exp = review_sub.add_parser("export", help="reviewed images as a labelled dataset folder + manifest.csv")
    exp.add_argument("--out", required=True, help="dataset folder")
    exp.add_argument("--from", dest="t_from", help="reviews from, ISO 8601")
    exp.add_argument("--to", dest="t_to", help="reviews before, ISO 8601")
    _store_args(exp)
    exp.set_defaults(func=_cmd_review_export)

    drift = sub.add_parser("drift", help="the drift watch: each signal against its reference")
    drift_sub = drift.add_subparsers(dest="drift_command", required=True)
    dr = drift_sub.add_parser("report", help="HTML page: each signal over time against its reference, alarms, "
                                             "estimated and realised accuracy")
    dr.add_argument("--from", dest="t_from", help=f"start, ISO 8601 (default: {DRIFT_DEFAULT_HOURS} h before --to)")
    dr.add_argument("--to", dest="t_to", help="end (exclusive), ISO 8601 (default: just after the latest part)")
    dr.add_argument("--camera", help="only this camera")
    dr.add_argument("--out", help="output file (default: linewatch-drift-DATE-TIME.html here)")
    _store_args(dr)
    dr.set_defaults(func=_cmd_drift_report)
    rl = drift_sub.add_parser("relearn", help="learn a camera's reference again from its next parts, after a "
                                              "deliberate change (a new lamp, a moved camera); audit-logged")
    rl.add_argument("--camera", required=True, help="the camera")
    rl.add_argument("--actor", required=True, help="who asks (audit log)")
    rl.add_argument("--config", help="line config of the running line (default: the embedded one)")
    rl.set_defaults(func=_cmd_drift_relearn)
