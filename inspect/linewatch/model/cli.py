"""`linewatch models ...`: the registry's commands (list, show, validate, promote, rollback)."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path
from typing import Any

from linewatch.config import ConfigError, LineConfig, load_config
from linewatch.model.registry import DEFAULT_ROOT, Registry, RegistryError, comparison_table, holdout_metrics, validate


def _registry(args: argparse.Namespace) -> Registry:
    return Registry(Path(args.registry))


def _cmd_list(args: argparse.Namespace) -> int:
    reg = _registry(args)
    active = {sha: recipe for recipe, sha in reg.active_by_recipe().items()}
    print(f"{'sha256':14}{'name':18}{'added':22}{'accuracy':>10}{'escape':>9}  active for")
    for v in reg.versions():
        m = v.card.get("metrics", {})
        acc = f"{m['accuracy']:.4f}" if "accuracy" in m else "-"
        esc = f"{m['escape_rate']:.4f}" if "escape_rate" in m else "-"
        print(f"{v.sha256[:12]:14}{v.name:18}{v.added:22}{acc:>10}{esc:>9}  {active.get(v.sha256, '')}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from linewatch.data.lineage import provenance
    from linewatch.model.onnx import Model, ModelError

    v = _registry(args).find(args.ref)
    try:
        meta = dict(Model(v.file, providers="cpu").info.metadata)
    except ModelError:
        meta = {}  # the card alone
    # what trained it (snapshot, dataset hash, code version, options): shown where the model or its card says
    made = {k: val for k, val in provenance(v.card, meta).items() if val is not None}
    bias = v.card.get("bias", {})  # the bias audit's headline; the per-segment table is the card's `segments`
    print(json.dumps({"sha256": v.sha256, "name": v.name, "file": str(v.file), "added": v.added,
                      "provenance": made, "largest_gap": bias.get("summary"), "card": v.card}, indent=2))
    return 0


def _line(args: argparse.Namespace) -> LineConfig:
    """The line config the gate judges with: its fail-safe bands and its worker's batch sizes."""
    try:
        return load_config(args.config) if args.config else LineConfig()
    except ConfigError as exc:
        raise RegistryError(str(exc)) from None


def _cmd_validate(args: argparse.Namespace) -> int:
    cfg = _line(args)
    model = validate(Path(args.file), cfg.infer.max_batch)
    info = model.info
    files = model.files.names()
    print(f"{args.file}: ok — {info.name} ({info.adapter}) sha256 {info.sha256[:12]}, labels {list(info.labels)}, "
          f"input {info.layout} {info.width}x{info.height}x{info.channels} uint8, batch sizes "
          f"{list(model.settings.batch_sizes)}" + (f" (the graph's fixed batch is {model.fixed_batch})"
                                                  if model.fixed_batch else "")
          + f", providers {model.providers}" + (f", files {list(files)}" if len(files) > 1 else ""))
    if args.holdout:
        print(comparison_table({"metrics": {"candidate": holdout_metrics(model, Path(args.holdout), cfg.failsafe)}}))
    return 0


def _cmd_promote(args: argparse.Namespace) -> int:
    cfg = _line(args)
    gate = cfg.retrain.gate
    tolerance = gate.tolerance if args.tolerance is None else args.tolerance
    report = _registry(args).promote(args.ref, args.recipe, Path(args.holdout) if args.holdout else None,
                                     tolerance, cfg.failsafe, cfg.infer.max_batch, gate)
    if "metrics" in report:
        print(comparison_table(report))
    print(f"promoted {report['candidate'][:12]} for recipe {args.recipe!r}"
          + (f" (was {report['active'][:12]})" if report["active"] else ""))
    _audit(args, cfg, "models promote", args.recipe, {"sha256": report["candidate"], "was": report["active"]})
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    cfg = _line(args)
    v = _registry(args).rollback(args.recipe)
    print(f"recipe {args.recipe!r} rolled back to {v.sha256[:12]} ({v.name})")
    _audit(args, cfg, "models rollback", args.recipe, {"sha256": v.sha256})
    return 0


def _audit(args: argparse.Namespace, cfg: LineConfig, action: str, recipe: str, detail: dict[str, Any]) -> None:
    """A model change made for a line (`--config`) goes into that line's audit log, as its sign-ins do."""
    if args.config:
        from linewatch.auth.db import audit

        audit(cfg.data_dir, f"cli:{getpass.getuser()}", action, "ok", target=recipe, detail=detail)


def _guard(func: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(func(args))
        except RegistryError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return run


def add_commands(sub: Any) -> None:
    models = sub.add_parser("models", help="model registry: list, show, validate, promote, rollback")
    models.add_argument("--registry", default=str(DEFAULT_ROOT), help="registry folder (default: models/)")
    msub = models.add_subparsers(dest="models_command", required=True)
    msub.add_parser("list", help="versions, their metrics and where they are active").set_defaults(
        func=_guard(_cmd_list))
    show = msub.add_parser("show", help="one version and its card (by hash prefix or name)")
    show.add_argument("ref")
    show.set_defaults(func=_guard(_cmd_show))
    val = msub.add_parser("validate", help="check a model file as the worker would; metrics on a holdout")
    val.add_argument("file")
    val.add_argument("--holdout", help="labelled folder or manifest to evaluate on")
    val.add_argument("--config", help="the line's config: its batch sizes and REVIEW bands (default: built-in)")
    val.set_defaults(func=_guard(_cmd_validate))
    pro = msub.add_parser("promote", help="make a model active for a recipe, through the validation gate")
    pro.add_argument("ref", help="an .onnx file (added to the registry) or a registered hash/name")
    pro.add_argument("--recipe", default="default")
    pro.add_argument("--holdout", help="the recipe's holdout set (required when a model is already active)")
    pro.add_argument("--tolerance", type=float,
                     help="allowed loss in accuracy, escape rate and REVIEW rate (default: retrain.gate.tolerance)")
    pro.add_argument("--config", help="the line's config: its batch sizes, REVIEW bands and gate (default: built-in); "
                                      "the promotion goes into its audit log")
    pro.set_defaults(func=_guard(_cmd_promote))
    rb = msub.add_parser("rollback", help="make the previously active model active again")
    rb.add_argument("--recipe", default="default")
    rb.add_argument("--config", help="the line's config: the change goes into its audit log")
    rb.set_defaults(func=_guard(_cmd_rollback))
