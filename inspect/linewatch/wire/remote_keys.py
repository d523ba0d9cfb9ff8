"""Who may be a remote worker: CurveZMQ keys on the TCP ports of `infer.remote`.

Why: over those ports a worker sends record the verdicts that pass or fail parts, and takes the cameras' frames.
A host that reached them unauthenticated could pass a bad part with a forged verdict, or pull frames (seeing the
images) that would then end as deadline FAILs. With `infer.remote.auth: curve` (the default) each TCP port is a
CurveZMQ server: the traffic is encrypted and only workers whose public key is enrolled get a connection. The
line's own processes keep their ipc:// sockets without keys (a socket's security applies to the binds after it
is set: record and acquire bind ipc:// first).

Files under `infer.remote.keys_dir` (default `<data_dir>/remote-keys`):

    line.key, line.key_secret   the line's pair, made at the first start; each worker host gets line.key
    workers/NAME.key            the public key of each worker allowed (`linewatch worker-key NAME` makes a pair)

A key put in `workers/` is taken at that worker's next connection, without a restart; a key removed refuses the
worker's next connection (one already made lasts until it drops: CurveZMQ checks keys at the handshake).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger("remote")

LINE_KEY = "line.key"  # the line's public key: given to every worker host
LINE_SECRET = "line.key_secret"
WORKERS = "workers"  # enrolled workers' public keys, one NAME.key each
_REFUSAL_LOG_S = 60.0  # one log line per refused key per minute: a stranger retrying does not flood the log


class RemoteKeyError(Exception):
    """A key file is missing or not a CurveZMQ certificate."""


def ensure_line_keys(keys_dir: Path) -> bool:
    """The line's key pair and the enrolment folder, made if missing (private: mode 0700 / 0600). True if made."""
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    keys_dir.chmod(0o700)  # the secret key lives here
    (keys_dir / WORKERS).mkdir(mode=0o700, exist_ok=True)
    if (keys_dir / LINE_SECRET).is_file():
        return False
    make_pair(keys_dir, "line")
    return True


def make_pair(folder: Path, name: str) -> tuple[Path, Path]:
    """A new pair as NAME.key (public) and NAME.key_secret (mode 0600) in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    umask = os.umask(0o077)  # the secret is never readable by others, not even between writing and a chmod
    try:
        public, secret = zmq.auth.create_certificates(folder, name)
    finally:
        os.umask(umask)
    os.chmod(public, 0o644)
    return Path(public), Path(secret)


def load_pair(path: Path) -> tuple[bytes, bytes | None]:
    """(public, secret) of a certificate file; secret is None in a public one."""
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise RemoteKeyError(f"{path}: not a readable CurveZMQ key file ({exc})") from exc
    if not public:
        raise RemoteKeyError(f"{path}: no public-key in it (a file of `linewatch worker-key` or the line's line.key)")
    return public, secret


def load_secret(path: Path) -> tuple[bytes, bytes]:
    public, secret = load_pair(path)
    if not secret:
        raise RemoteKeyError(f"{path}: no secret-key in it (give the .key_secret file, not the public .key)")
    return public, secret


class EnrolledWorkers:
    """The ZAP check of a CurveZMQ server: a client key is allowed when a file in `folder` holds it. The files are
    read again when one is added, removed or rewritten, so enrolling or removing a worker needs no restart."""

    def __init__(self, folder: Path, role: str):
        self.folder, self.role = folder, role
        self.keys: dict[bytes, str] = {}
        self._read: tuple[tuple[str, int, int, int, int], ...] | None = None
        self._logged: dict[bytes, float] = {}

    def _reload(self) -> None:
        files = sorted(self.folder.glob("*.key"))  # none when the folder is missing: every worker is refused
        stamp = []
        for path in files:
            with contextlib.suppress(OSError):  # removed meanwhile
                st = path.stat()  # a copy still being written has another size or change time when it is done
                stamp.append((path.name, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        if tuple(stamp) == self._read:
            return
        keys: dict[bytes, str] = {}
        for path in files:
            try:
                keys[load_pair(path)[0]] = path.stem
            except RemoteKeyError as exc:
                log.error("remote workers: %s; that file enrols no worker", exc)
        self.keys, self._read = keys, tuple(stamp)

    def callback(self, domain: str, key: bytes) -> bool:
        from linewatch import metrics

        self._reload()
        if key in self.keys:
            return True
        metrics.REMOTE_WORKERS_REFUSED.labels(self.role).inc()
        now = time.monotonic()
        if now - self._logged.get(key, -_REFUSAL_LOG_S) >= _REFUSAL_LOG_S:
            if len(self._logged) >= 1000:  # strangers trying ever new keys do not grow it without bound
                self._logged = {k: t for k, t in self._logged.items() if now - t < _REFUSAL_LOG_S}
                if len(self._logged) >= 1000:  # a flood: counted, logged again once it has passed
                    return False
            self._logged[key] = now
            log.warning("%s: refused a remote worker whose key %s is not enrolled in %s", self.role,
                        key.decode(errors="replace"), self.folder)
        return False


def serve_remote(sock: zmq.Socket[Any], keys_dir: Path, role: str) -> ThreadAuthenticator:
    """Make the next binds of `sock` CurveZMQ servers with the line's key that take enrolled workers only. Call
    it after binding the socket's ipc:// endpoint (that stays without keys) and before binding its tcp:// one.
    The returned authenticator runs until stopped (at close)."""
    public, secret = load_secret(keys_dir / LINE_SECRET)
    auth = ThreadAuthenticator(sock.context, log=logging.getLogger("remote.zap"))
    auth.start()
    auth.configure_curve_callback("*", EnrolledWorkers(keys_dir / WORKERS, role))
    sock.curve_secretkey, sock.curve_publickey, sock.curve_server = secret, public, True
    return auth


def join_remote(ctx: zmq.Context[Any], own_secret: Path, line_public: Path) -> None:
    """Every socket made from `ctx` after this connects as a CurveZMQ client: this worker's pair, the line's key."""
    public, secret = load_secret(own_secret)
    ctx.curve_publickey, ctx.curve_secretkey = public, secret
    ctx.curve_serverkey = load_pair(line_public)[0]


_HANDSHAKE_FAILED: dict[int, str] = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "the line refused this worker's key (is its NAME.key in the line's "
    "remote-keys/workers/?)",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "the line and this worker disagree on security (CurveZMQ on one side only: "
    "--key and --line-key, or the line's infer.remote.auth)",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "the handshake failed (a wrong --line-key?)",
}


def report_refusals(sock: zmq.Socket[Any], what: str) -> None:
    """Log why the line refuses this remote worker's connection, which ZeroMQ otherwise retries in silence: a worker
    that is never given a frame should say so (a thread reads the socket's monitor until the socket closes)."""
    from zmq.utils.monitor import recv_monitor_message

    monitor = sock.get_monitor_socket(sum(_HANDSHAKE_FAILED) | zmq.EVENT_MONITOR_STOPPED)

    def follow() -> None:
        said: set[int] = set()
        try:
            while True:
                event = recv_monitor_message(monitor)
                if event["event"] == zmq.EVENT_MONITOR_STOPPED:
                    return
                if event["event"] not in said:  # once per kind: ZeroMQ retries about every 0.1-1 s
                    said.add(event["event"])
                    log.error("%s at %s: %s", what, event["endpoint"].decode(errors="replace"),
                              _HANDSHAKE_FAILED[event["event"]])
        except zmq.ZMQError:  # the context ended
            return
        finally:
            monitor.close(linger=0)

    threading.Thread(target=follow, name=f"handshakes-{what}", daemon=True).start()
