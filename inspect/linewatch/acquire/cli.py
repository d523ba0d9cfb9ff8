"""`linewatch cameras list|probe|trigger` and `linewatch emulate`: the camera tools of the CLI."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

KEY_FEATURES = ("DeviceVendorName", "DeviceModelName", "DeviceSerialNumber", "DeviceUserID", "DeviceFirmwareVersion",
                "Width", "Height", "OffsetX", "OffsetY", "PixelFormat", "AcquisitionMode", "AcquisitionFrameRate",
                "ExposureTime", "Gain", "TriggerMode", "TriggerSource", "TriggerActivation", "PayloadSize")


def _producers(args: argparse.Namespace) -> list[Path]:
    from linewatch.acquire.sources.genicam import find_producers

    return find_producers([Path(p) for p in args.producer or []])


def _cmd_list(args: argparse.Namespace) -> int:
    from linewatch.acquire.sources import SourceError
    from linewatch.acquire.sources.genicam import describe, open_harvester

    try:
        producers = _producers(args)
        h = open_harvester(producers)
    except SourceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        rows = [describe(info) for info in h.device_info_list]
    finally:
        h.reset()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{len(rows)} device(s) from {', '.join(str(p) for p in producers)}")
    cols = ("id", "vendor", "model", "serial", "user_name", "access")
    widths = [max([len(c)] + [len(str(r[c])) for r in rows]) for c in cols]
    for line in [dict(zip(cols, cols, strict=True)), *rows]:
        print("  ".join(str(line[c]).ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip())
    return 0


def _feature(nm: Any, name: str) -> str | None:
    from genicam.genapi import GenericException

    if not nm.has_node(name):
        return None
    node = nm.get_node(name)
    try:
        text = str(node.value)
        if hasattr(node, "symbolics"):
            text += f"  (one of {', '.join(node.symbolics)})"
        elif hasattr(node, "min") and hasattr(node, "max"):
            text += f"  [{node.min} .. {node.max}]"
        return text
    except (GenericException, AttributeError):
        return "(not readable)"


def _cmd_probe(args: argparse.Namespace) -> int:
    from linewatch.acquire.sources import SourceError
    from linewatch.acquire.sources.genicam import describe, open_harvester, select_device

    try:
        h = open_harvester(_producers(args))
        index = select_device(h, args.id)
    except SourceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        info = describe(h.device_info_list[index])
        ia = h.create(index)
        try:
            nm = ia.remote_device.node_map
            features = {n: v for n in KEY_FEATURES if (v := _feature(nm, n)) is not None}
        finally:
            ia.destroy()
    finally:
        h.reset()
    print(f"{info['vendor']} {info['model']}  id {info['id']}  serial {info['serial']}  ({info['access']})")
    for name, value in features.items():
        print(f"  {name:<22} {value}")
    return 0


def _cmd_trigger(args: argparse.Namespace) -> int:
    from linewatch.config import load_config
    from linewatch.wire import CameraCommand, Endpoints, MessageError
    from linewatch.wire.camera_client import CameraNoAnswer, request_camera

    cfg = load_config(args.config)
    if args.data_dir:
        cfg = cfg.model_copy(update={"data_dir": Path(args.data_dir)})
    try:
        reply = request_camera(Endpoints(cfg.run_dir), args.camera, CameraCommand(cmd="trigger", part_id=args.part_id),
                               timeout_s=5.0)
    except (CameraNoAnswer, MessageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(reply.__dict__))
    return 0 if reply.ok else 1


def _cmd_emulate(args: argparse.Namespace) -> int:
    from linewatch.acquire.sources.emulated import EmulatorCamera
    from linewatch.acquire.sources.replay import MANIFEST
    from linewatch.config import CameraConfig
    from linewatch.emulator.scene import SceneError

    try:
        cam = CameraConfig.model_validate({
            "name": "emulate", "width": args.width, "height": args.height, "fps": args.fps,
            "pixel_format": args.pixel_format,
            "source": {"type": "emulator", "seed": args.seed, "scene": str(args.scene) if args.scene else None},
        })
        camera = EmulatorCamera(cam)
    except (SceneError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import cv2

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / MANIFEST).open("w") as manifest:
        for _ in range(args.count):
            frame = camera.grab(1.0)
            assert frame is not None  # free-running emulator: always a frame
            name = f"{frame.frame_id:06d}.png"
            px = frame.pixels if frame.pixels.ndim == 2 else cv2.cvtColor(frame.pixels, cv2.COLOR_RGB2BGR)
            cv2.imwrite(str(out / name), px)
            manifest.write(json.dumps({"file": name, "frame_id": frame.frame_id, "truth": frame.truth}) + "\n")
    print(f"{args.count} image(s) and {MANIFEST} written to {out}")
    return 0


def add_commands(sub: Any) -> None:
    cams = sub.add_parser("cameras", help="GenICam cameras: list, probe, trigger")
    cams_sub = cams.add_subparsers(dest="cameras_command", required=True)
    ls = cams_sub.add_parser("list", help="every device every GenTL producer offers")
    ls.add_argument("--producer", action="append", help="GenTL producer .cti (default: GENICAM_GENTL64_PATH)")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=_cmd_list)
    probe = cams_sub.add_parser("probe", help="key features of one device (serial, user name or id)")
    probe.add_argument("id")
    probe.add_argument("--producer", action="append", help="GenTL producer .cti (default: GENICAM_GENTL64_PATH)")
    probe.set_defaults(func=_cmd_probe)
    trig = cams_sub.add_parser("trigger", help="software-trigger a camera of the running line")
    trig.add_argument("camera")
    trig.add_argument("--config", type=Path, help="the line's YAML config (its runtime dir)")
    trig.add_argument("--data-dir", help="override data_dir")
    trig.add_argument("--part-id", help="part id to record (default: generated)")
    trig.set_defaults(func=_cmd_trigger)

    emu = sub.add_parser("emulate", help="write a labelled dataset (images + manifest) from an emulator scene")
    emu.add_argument("--scene", type=Path, help="scene file (default: the reference round part)")
    emu.add_argument("--count", type=int, required=True, help="number of images")
    emu.add_argument("--out", type=Path, required=True, help="output folder")
    emu.add_argument("--seed", type=int, default=0)
    emu.add_argument("--width", type=int, default=256)
    emu.add_argument("--height", type=int, default=256)
    emu.add_argument("--fps", type=float, default=20.0, help="frame rate that sets scene time")
    emu.add_argument("--pixel-format", default="Mono8", choices=["Mono8", "RGB8", "BGR8"])
    emu.set_defaults(func=_cmd_emulate)
