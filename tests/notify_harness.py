"""Real counterparts of the notify process: an HTTP receiver that checks signatures (and can fail or go away),
a mosquitto broker on a free port, and a store the test writes as record would."""

from __future__ import annotations

import getpass
import hashlib
import hmac
import json
import shutil
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import sqlite_utils
from paho.mqtt.enums import CallbackAPIVersion

from linewatch.store.rows import verdict_row
from linewatch.store.writer import insert_alarm, insert_verdicts
from linewatch.wire import Alarm, Verdict
from tests.conftest import wait_for

REPLAY_WINDOW_S = 300


class Receiver:
    """A plant system's webhook endpoint: verifies each request's HMAC-SHA256 signature and timestamp on its own
    (not with linewatch's code), answers 500 to the first `fail_first` valid requests, keeps the rest, and answers
    the first `stall_first` of those it keeps only after `stall_s`."""

    def __init__(self, port: int, secret: bytes, fail_first: int = 0, delay_s: float = 0.0, stall_first: int = 0,
                 stall_s: float = 0.0):
        self.port, self.secret, self.fail_left, self.delay_s = port, secret, fail_first, delay_s
        self.stall_left, self.stall_s = stall_first, stall_s  # keep these, but answer only after stall_s
        self.taken: list[dict[str, Any]] = []  # bodies answered 2xx, in arrival order
        self.failed = 0  # valid requests answered 500 on purpose
        self.refused: list[str] = []  # requests whose signature, timestamp or key did not check out
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def verify(self, headers: Any, body: bytes) -> str | None:
        """Why the request is not genuine, or None: the receiver's side of docs/integrations.md."""
        parts = dict(p.split("=", 1) for p in headers.get("X-Linewatch-Signature", "").split(",") if "=" in p)
        if "t" not in parts or "v1" not in parts:
            return "no signature"
        if abs(time.time() - int(parts["t"])) > REPLAY_WINDOW_S:
            return "stale timestamp"
        expected = hmac.new(self.secret, parts["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, parts["v1"]):
            return "bad signature"
        if headers.get("Idempotency-Key") != json.loads(body)["id"]:
            return "key differs from the body's id"
        return None

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                problem = receiver.verify(self.headers, body)
                with receiver._lock:
                    stall = not problem and receiver.stall_left > 0
                    receiver.stall_left -= stall
                if stall:
                    time.sleep(receiver.stall_s)
                with receiver._lock:
                    if problem:
                        receiver.refused.append(problem)
                        code = 401
                    elif receiver.fail_left > 0 and not stall:
                        receiver.fail_left -= 1
                        receiver.failed += 1
                        code = 500
                    else:
                        time.sleep(receiver.delay_s)
                        receiver.taken.append(json.loads(body))
                        code = 204
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Gone: the port refuses connections until `start()`."""
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()
        self._server = None

    def keys(self) -> list[str]:
        with self._lock:
            return [b["id"] for b in self.taken]


class Mosquitto:
    """Debian's mosquitto on a free loopback port, anonymous; sessions and retained messages outlive a restart."""

    def __init__(self, tmp: Path, port: int, users: dict[str, str] | None = None):
        self.port = port
        self.conf = tmp / "mosquitto.conf"
        access = "allow_anonymous true\n"
        if users:  # only these users, with their passwords (mosquitto_passwd hashes them)
            passwords = tmp / "mosquitto.passwd"
            for i, (user, password) in enumerate(users.items()):
                subprocess.run(["mosquitto_passwd", "-b", *(["-c"] if i == 0 else []), str(passwords), user, password],
                               check=True, capture_output=True)
            access = f"allow_anonymous false\npassword_file {passwords}\n"
        self.conf.write_text(f"listener {port} 127.0.0.1\n{access}persistence true\n"
                             f"persistence_location {tmp}/\nautosave_interval 0\n"
                             f"user {getpass.getuser()}\n")  # as root it would drop to a user who cannot write tmp
        self.log = tmp / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Mosquitto:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([exe, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT)
        wait_for(self._listening, 10, "mosquitto to listen")
        return self

    def _listening(self) -> bool:
        assert self.proc is not None
        assert self.proc.poll() is None, f"mosquitto exited:\n{self.log.read_text()}"
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=5)


def add_verdicts(db: sqlite_utils.Database, first_seq: int, finals: list[str], camera: str = "cam0") -> None:
    """Inspections `first_seq`... as record commits them, one group."""
    rows = [verdict_row(Verdict(camera, "s", first_seq + i, f"p{first_seq + i}", final, "model",  # type: ignore[arg-type]
                                t_capture_ns=1_790_000_000_000_000_000 + first_seq + i), 1_790_000_000_000_100_000)
            for i, final in enumerate(finals)]
    insert_verdicts(db, rows)


def add_alarm(db: sqlite_utils.Database, kind: str, severity: str = "warning") -> int:
    return insert_alarm(db, Alarm("test", kind, f"{kind} raised by the test", severity))  # type: ignore[arg-type]


class Subscriber:
    """A plant system's MQTT client (paho): every message under `topic` with its retain flag, in arrival order.
    `session`: a persistent session the broker keeps (with its queued QoS 1 messages) while the client is away."""

    def __init__(self, port: int, topic: str = "linewatch/#", session: str | None = None,
                 login: tuple[str, str] | None = None):
        self.port, self.topic = port, topic
        self.messages: list[tuple[str, dict[str, Any], bool]] = []
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=session or "",
                                  clean_session=session is None)
        if login:
            self.client.username_pw_set(*login)
        self.client.on_connect = lambda c, *_: c.subscribe(self.topic, qos=1)
        self.client.on_message = lambda _c, _u, m: self.messages.append(
            (m.topic, json.loads(m.payload), bool(m.retain)))
        self.client.reconnect_delay_set(1, 1)

    def start(self) -> Subscriber:
        self.client.connect("127.0.0.1", self.port, keepalive=5)
        self.client.loop_start()
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def on(self, suffix: str) -> list[tuple[dict[str, Any], bool]]:
        return [(payload, retain) for topic, payload, retain in list(self.messages) if topic.endswith(suffix)]
