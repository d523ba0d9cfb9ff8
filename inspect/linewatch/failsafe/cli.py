"""`linewatch failsafe ...`: show the effective rule set (what a ruleset_hash stands for) and build
a golden template for the template-difference check."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from linewatch.config import load_config


def _cmd_show(args: argparse.Namespace) -> int:
    from linewatch.failsafe import FailSafe, RulesetError
    from linewatch.model.onnx import Model, ModelError

    cfg = load_config(args.config)
    try:
        model = Model(cfg.model.path, "cpu")
        fs = FailSafe(cfg.failsafe, model.frame_shape, model.info)
    except (ModelError, RulesetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"ruleset_hash": fs.ruleset_hash, "model": model.info.sha256, **fs.spec}, indent=2))
    return 0


def _cmd_template(args: argparse.Namespace) -> int:
    from linewatch.failsafe.backup import TemplateError, build_template

    if args.images:
        files = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() in (".png", ".bmp", ".tif", ".jpg"))
        frames = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in files[: args.count]]
        if not frames or any(f is None for f in frames):
            print(f"error: {args.images}: needs readable images of good parts", file=sys.stderr)
            return 2
    else:
        from linewatch.emulator.parts import PartEmulator

        emu = PartEmulator(seed=args.seed, defect_rate=0.0)
        frames = [emu.render(s).pixels for s in range(args.count)]
    try:
        template = build_template([np.asarray(f, np.uint8) for f in frames])
    except TemplateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.suffix == ".npy":
        np.save(out, template)
    elif not cv2.imwrite(str(out), template):
        print(f"error: {out}: cannot write an image there", file=sys.stderr)
        return 2
    print(f"{out}: golden template from {len(frames)} good parts; set failsafe.template.path to use it")
    return 0


def add_commands(sub: Any) -> None:
    fs = sub.add_parser("failsafe", help="fail-safe rules: effective rule set, golden template")
    fs_sub = fs.add_subparsers(dest="failsafe_command", required=True)
    show = fs_sub.add_parser("show", help="the effective rule set and its hash for a config and its model")
    show.add_argument("--config", help="line config (default: the embedded default)")
    show.set_defaults(func=_cmd_show)
    tpl = fs_sub.add_parser("template", help="build a golden template from good parts")
    tpl.add_argument("out", help="output file (.png or .npy)")
    tpl.add_argument("--images", help="folder of good-part images (default: emulator parts)")
    tpl.add_argument("--count", type=int, default=50, help="parts averaged")
    tpl.add_argument("--seed", type=int, default=0, help="emulator seed when no --images")
    tpl.set_defaults(func=_cmd_template)
