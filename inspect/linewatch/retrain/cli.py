"""`linewatch retrain --recipe R`: the loop from reviewed parts to a promoted (or refused) model, with a progress bar.

Exit codes: 0 promoted; 1 refused (the data fails its check, or the gate); 2 the run cannot start (settings,
snapshots) or failed (the trainer's or the registry's error, printed).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from typing import Any

from linewatch.config import ConfigError, load_config

NICE = 10  # added to the retrain process's niceness (the line's processes keep theirs)


def _cmd_retrain(args: argparse.Namespace) -> int:
    missing = [name for name in ("torch", "rich") if importlib.util.find_spec(name) is None]
    if missing:  # the train extra (PyTorch, rich's progress bar): not in the appliance image
        print(f"error: retraining needs the train and data extras ({', '.join(missing)} not installed): "
              "pip install -e '.[train,data]'", file=sys.stderr)
        return 2
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from linewatch.model.registry import comparison_table
    from linewatch.retrain.loop import RetrainError, run_retrain, settings
    from linewatch.retrain.runs import RUNS_DIR, RunLog, new_run_id

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    recipe = args.recipe or cfg.recipe
    try:
        _, reg, _, _ = settings(cfg, recipe)
    except RetrainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    os.nice(NICE)  # training yields the CPU to the line it may run beside: a verdict deadline outranks an epoch
    with Progress(TextColumn("{task.description:<28}"), BarColumn(), TextColumn("{task.percentage:>3.0f} %"),
                  TimeElapsedColumn()) as bar:
        task = bar.add_task(f"retrain {recipe}", total=100)

        def show(run: dict[str, Any]) -> None:
            epoch = f" {run['epoch'][0]}/{run['epoch'][1]}" if run["stage"] == "train" and run.get("epoch") else ""
            bar.update(task, completed=100 * run["progress"], description=f"{run['stage']}{epoch}")

        run = RunLog(reg.root / RUNS_DIR, args.run_id or new_run_id(), recipe,
                     args.actor or os.environ.get("USER") or "cli", show)
        try:
            record = run_retrain(cfg, recipe, run)
        except RetrainError as exc:
            run.finish("failed", str(exc))
            print(f"error: {exc}", file=sys.stderr)
            return 2
    print(f"run {record['id']}: reviews {record.get('reviews', 0)}, items {record.get('items', '-')}, "
          f"snapshot {record.get('snapshot') or '-'}")
    if record.get("comparison", {}).get("metrics"):
        print(comparison_table(record["comparison"]))
    for finding in record.get("findings", []):
        print(f"  {finding['message']}")
    out = sys.stdout if record["state"] == "promoted" else sys.stderr
    print(("" if record["state"] == "promoted" else "error: ") + record["message"], file=out)
    return {"promoted": 0, "refused": 1}.get(record["state"], 2)


def add_commands(sub: Any) -> None:
    p = sub.add_parser("retrain", help="base snapshot + reviewed parts -> check -> train -> gate -> promote or refuse")
    p.add_argument("--recipe", help="the recipe whose retrain settings to use (default: the config's recipe)")
    p.add_argument("--config", help="YAML config file (data_dir, retrain settings, the line's cameras)")
    p.add_argument("--actor", help="who asks for the run, for its record (default: $USER)")
    p.add_argument("--run-id", help="the run's id (default: a new one; POST /api/retrain names its run before it "
                                    "starts the process)")
    p.set_defaults(func=_cmd_retrain)
