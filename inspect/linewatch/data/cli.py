"""`linewatch data snapshot|list|show|diff|export|check`: immutable dataset versions and their integrity checks;
`linewatch lineage ID`: from an inspection to its model and the snapshot that trained it.

Exit codes: 0 done; 1 the data failed its check (the errors are printed), or a lineage link is missing (what is
known is printed); 2 a bad argument, an unknown or ambiguous snapshot id, an unreadable source, an unknown
inspection.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from linewatch.data.check import CheckResult, Recipe, check
from linewatch.data.items import DataError, Entry, read_sources
from linewatch.data.registry import DataRegistry, diff, open_registry
from linewatch.data.report import counts, summary, write_html
from linewatch.paths import MODELS_DIR


def _registry(args: argparse.Namespace) -> DataRegistry:
    return open_registry(args.registry, args.config, args.data_dir)


def _recipe(args: argparse.Namespace) -> Recipe:
    size = None
    if args.frame_size:
        try:
            w, h = (int(v) for v in args.frame_size.lower().split("x"))
        except ValueError:
            raise DataError(f"--frame-size {args.frame_size!r}: want WxH, e.g. 640x480") from None
        size = (w, h)
    return Recipe(size, args.channels, args.val_fraction, args.seed)


def _run_check(entries: list[Entry], args: argparse.Namespace, title: str) -> CheckResult:
    result = check(entries, _recipe(args))
    print(summary(result, title))
    if args.report:
        write_html(result, title, Path(args.report))
        print(f"report: {args.report}")
    return result


def _cmd_snapshot(args: argparse.Namespace) -> int:
    reg = _registry(args)
    entries, sources = read_sources([Path(s) for s in args.src])
    if not args.no_check and _run_check(entries, args, f"check of {', '.join(args.src)}").errors:
        print("error: not snapshotted: the data fails its check (above); fix it or pass --no-check",
              file=sys.stderr)
        return 1
    snap, new = reg.snapshot(entries, sources, args.name, args.parent)
    if not new:
        print(f"identical to snapshot {snap.name!r} of {snap.created}: nothing written")
    else:
        print(f"snapshot {snap.name!r}: {snap.items} item(s), classes "
              + ", ".join(f"{k} {v}" for k, v in snap.classes.items()) + f", in {reg.root}")
    print(snap.id)
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    print(f"{'id':14}{'name':20}{'items':>7}  {'classes':32}{'parent':14}created")
    for s in _registry(args).snapshots():
        classes = ", ".join(f"{k} {v}" for k, v in s.classes.items())
        print(f"{s.id[:12]:14}{s.name[:19]:20}{s.items:>7}  {classes[:31]:32}{(s.parent or '-')[:12]:14}{s.created}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    reg = _registry(args)
    snap = reg.find(args.id)
    print(f"snapshot {snap.id}\nname     {snap.name}\ncreated  {snap.created}\nparent   {snap.parent or '-'}")
    print(f"items    {snap.items}")
    for col, values in counts(reg.entries(snap)).items():
        print(f"{col}: " + ", ".join(f"{v or '(none)'} {n}" for v, n in values.items()))
    print("sources:")
    for src in snap.sources:
        print(f"  {src['name']}: {src['items']} item(s), {src['kind']}, {src['path']}")
    return 0


def _cmd_diff(args: argparse.Namespace) -> int:
    reg = _registry(args)
    a, b = reg.find(args.a), reg.find(args.b)
    d = diff(reg.entries(a), reg.entries(b))
    for e in d.added:
        print(f"+ {e.sha256[:12]}  {e.label:12} {e.key}")
    for e in d.removed:
        print(f"- {e.sha256[:12]}  {e.label:12} {e.key}")
    for old, new in d.relabelled:
        print(f"~ {new.sha256[:12]}  {old.label} -> {new.label}  {new.key}")
    print(f"{a.id[:12]} -> {b.id[:12]}: {len(d.added)} added, {len(d.removed)} removed, "
          f"{len(d.relabelled)} relabelled")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    reg = _registry(args)
    snap = reg.find(args.id)
    n = reg.export(snap, Path(args.out))
    print(f"{args.out}: {n} image(s) of snapshot {snap.id[:12]} ({snap.name}), manifest.csv")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    target = Path(args.target)
    if target.exists():
        entries, _ = read_sources([target], sort=False)  # the trainer's own order: its split
        title = f"check of {target}"
    else:
        reg = _registry(args)
        snap = reg.find(args.target)
        entries, title = reg.entries(snap), f"check of snapshot {snap.id[:12]} ({snap.name})"
    return 1 if _run_check(entries, args, title).errors else 0


def _cmd_lineage(args: argparse.Namespace) -> int:
    import json

    from linewatch.config import load_config
    from linewatch.data.lineage import LineageError, render, trace
    from linewatch.model.registry import Registry

    data_dir = Path(args.data_dir) if args.data_dir else load_config(args.config).data_dir
    try:
        chain = trace(args.inspection_id, data_dir, Registry(Path(args.models)),
                      open_registry(args.registry, None, data_dir))
    except LineageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(chain, indent=2) if args.json else render(chain))
    return 1 if chain["missing"] else 0


def _guarded(func: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(func(args))
        except DataError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    return run


def _registry_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--registry", help="the data registry folder (default: data_dir/datasets)")
    p.add_argument("--config", type=Path, help="YAML config file (for data_dir)")
    p.add_argument("--data-dir", help="the line's data directory (overrides the config)")


def _check_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frame-size", help="WxH of the line's frames: other sizes are errors")
    p.add_argument("--channels", type=int, choices=[1, 3], help="1 = Mono8, 3 = RGB8: other images are errors")
    p.add_argument("--val-fraction", type=float, default=0.2, help="the trainer's validation share (leak check)")
    p.add_argument("--seed", type=int, default=0, help="the trainer's split seed (leak check)")
    p.add_argument("--report", help="also write the summary as an HTML page with thumbnails")


def add_commands(sub: Any) -> None:
    data = sub.add_parser("data", help="immutable dataset snapshots and their integrity checks")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    snap = data_sub.add_parser("snapshot", help="store labelled data as an immutable snapshot; prints its id last")
    snap.add_argument("src", nargs="+", help="folder of class subfolders, manifest, emulate output, review export")
    snap.add_argument("--name", required=True, help="a name people know the snapshot by")
    snap.add_argument("--parent", help="the snapshot this one grew from (id or prefix)")
    snap.add_argument("--no-check", action="store_true", help="store without running the check")
    _check_args(snap)
    _registry_args(snap)
    snap.set_defaults(func=_guarded(_cmd_snapshot))
    ls = data_sub.add_parser("list", help="every snapshot: id, name, items, classes, parent, created")
    _registry_args(ls)
    ls.set_defaults(func=_guarded(_cmd_list))
    show = data_sub.add_parser("show", help="one snapshot: counts per class and segment, sources, parent")
    show.add_argument("id", help="snapshot id or a unique prefix (8+ hex characters)")
    _registry_args(show)
    show.set_defaults(func=_guarded(_cmd_show))
    df = data_sub.add_parser("diff", help="items added, removed and relabelled from snapshot A to B")
    df.add_argument("a")
    df.add_argument("b")
    _registry_args(df)
    df.set_defaults(func=_guarded(_cmd_diff))
    exp = data_sub.add_parser("export", help="a snapshot as a plain folder + manifest.csv that train reads")
    exp.add_argument("id", help="snapshot id or a unique prefix")
    exp.add_argument("--out", required=True, help="a new or empty folder")
    _registry_args(exp)
    exp.set_defaults(func=_guarded(_cmd_export))
    chk = data_sub.add_parser("check", help="integrity checks of a dataset or snapshot; exit 1 on errors")
    chk.add_argument("target", help="a dataset folder or manifest, or a snapshot id")
    _check_args(chk)
    _registry_args(chk)
    chk.set_defaults(func=_guarded(_cmd_check))
    lin = sub.add_parser("lineage", help="an inspection's model, its training data snapshot, code version and options")
    lin.add_argument("inspection_id", type=int, help="the inspection row's id (store, HMI, API)")
    lin.add_argument("--json", action="store_true", help="the chain as JSON")
    lin.add_argument("--models", default=str(MODELS_DIR), help="the model registry folder (default: models/)")
    _registry_args(lin)
    lin.set_defaults(func=_guarded(_cmd_lineage))
