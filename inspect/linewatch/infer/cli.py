"""`linewatch worker`: an inference worker in its own process, on this host or another, for a line that
takes remote workers (`infer.remote`): it pulls the line's frames and pushes verdicts over TCP."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

HELP = "run a remote inference worker for a line (infer.remote) over tcp://HOST:PORT"
KEY_HELP = "make a remote worker's CurveZMQ key pair; enrol it by copying NAME.key into the line's remote-keys/workers/"


def _cmd_worker_key(args: argparse.Namespace) -> int:
    from linewatch.wire.remote_keys import make_pair

    if not args.name.replace("-", "").replace("_", "").isalnum():
        print(f"error: name {args.name!r}: letters, digits, - and _ only (it names the key files)", file=sys.stderr)
        return 2
    if (args.dir / f"{args.name}.key_secret").exists():
        print(f"error: {args.dir / (args.name + '.key_secret')} exists; refusing to replace a worker's key",
              file=sys.stderr)
        return 2
    public, secret = make_pair(args.dir, args.name)
    print(f"{secret}: this worker's secret key (linewatch worker --key {secret}); keep it on the worker host")
    print(f"{public}: copy it into the line's remote-keys/workers/ to enrol the worker")
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    from linewatch.config import load_config
    from linewatch.infer.process import Infer
    from linewatch.line.child import serve, setup_logging, single_threaded_opencv, stop_on_signals
    from linewatch.line.supervisor import resolve_paths
    from linewatch.model.onnx import ModelError
    from linewatch.wire.endpoints import EndpointError, parse_connect
    from linewatch.wire.remote_keys import RemoteKeyError, load_pair, load_secret

    try:
        remote = parse_connect(args.connect)
        if (args.key is None) != (args.line_key is None):
            raise EndpointError("--key and --line-key go together (a line with infer.remote.auth curve needs both; "
                                "one with auth none neither)")
        keys = None if args.key is None else (args.key, args.line_key)
        if keys is not None:
            load_secret(args.key)
            load_pair(args.line_key)
    except (EndpointError, RemoteKeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cfg = load_config(args.config)
    if args.data_dir:
        cfg = cfg.model_copy(update={"data_dir": Path(args.data_dir), "runtime_dir": None})
    cfg = resolve_paths(cfg)
    if cfg.infer.transport != "inline":
        print("error: infer.transport must be inline for a remote worker (the line's config, as given with "
              "--config)", file=sys.stderr)
        return 2
    name = args.name or f"{socket.gethostname()}-{os.getpid()}"
    tag = f"infer[{name}]"
    setup_logging(tag)
    stop = stop_on_signals(tag)
    single_threaded_opencv()
    if args.metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, addr=args.metrics_host)
    try:
        serve(Infer(cfg, 0, stop, remote=remote, name=name, keys=keys), cfg.run_dir, tag, stop)
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    w = sub.add_parser("worker", help=HELP, description=HELP)
    w.add_argument("--connect", required=True, help="the line's infer.remote address: tcp://HOST:PORT")
    w.add_argument("--key", type=Path, help="this worker's secret key file (NAME.key_secret of `linewatch worker-key`; "
                   "its NAME.key enrolled in the line's remote-keys/workers/)")
    w.add_argument("--line-key", type=Path, help="the line's public key file (line.key in its remote-keys folder)")
    w.add_argument("--config", type=Path, help="the line's YAML config (cameras, model, fail-safe, recipe)")
    w.add_argument("--data-dir", help="this worker's own data_dir (its ready file goes in data_dir/run)")
    w.add_argument("--name", help="worker name in verdicts, alarms and logs: infer[NAME] (default: HOST-PID)")
    w.add_argument("--metrics-port", type=int, help="serve this worker's Prometheus metrics on this port")
    w.add_argument("--metrics-host", default="127.0.0.1", help="address for --metrics-port")
    w.set_defaults(func=_cmd_worker)
    k = sub.add_parser("worker-key", help=KEY_HELP, description=KEY_HELP)
    k.add_argument("name", help="the worker's name: NAME.key (public) and NAME.key_secret are written")
    k.add_argument("--dir", type=Path, default=Path("."), help="folder for the two files (default: here)")
    k.set_defaults(func=_cmd_worker_key)
