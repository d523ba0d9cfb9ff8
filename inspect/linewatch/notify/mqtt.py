"""MQTT: verdicts, alarms and the line's status on a Unified-Namespace topic tree, through paho-mqtt.

Topics: `<prefix>/<line>/<camera>/verdict` (each inspection, `row_to_api`), `<prefix>/<line>/alarm` (each
raised alarm) and `<prefix>/<line>/status` (retained: online with what is down and how many alarms are
active; the broker's last will sets it offline when the line's connection dies). MQTT is the live feed:
while the broker is away, or across a restart, up to `mqtt.buffer` messages wait, the oldest dropped and
counted beyond that. The lossless path is the HTTP hooks'.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections import deque
from typing import Any

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from linewatch import metrics
from linewatch.clock import now_ns
from linewatch.config import LineConfig
from linewatch.notify.events import EventKind, count_after, last_id, newest_after, read_events
from linewatch.store.delivery import DeliveryState
from linewatch.store.queries import open_reader
from linewatch.wire.ready import child_name, down, line_children

log = logging.getLogger("notify")
IN_FLIGHT = 100  # messages handed to paho and not yet acknowledged; the rest wait in the bounded buffer
_KINDS: tuple[EventKind, ...] = ("verdict", "alarm")
_Message = tuple[str, int, str, bytes]  # kind (verdict, alarm, status), store id (0: status), topic, payload


class MqttLink:
    """The line's one connection to the broker; `run()` is the notify process's main loop."""

    def __init__(self, cfg: LineConfig, stop: threading.Event, password: str | None = None):
        self.cfg, self.mqtt, self.stop = cfg, cfg.notify.mqtt, stop
        self._password = password
        root = f"{self.mqtt.topic_prefix}/{cfg.line}"
        self.status_topic, self.alarm_topic = f"{root}/status", f"{root}/alarm"
        self.verdict_topic = root + "/{camera}/verdict"
        self.buffer: deque[_Message] = deque()  # bounded by mqtt.buffer
        self.dropped = self.published = 0
        self.acked: dict[str, int] = {}  # per kind: store id of the newest event the broker acknowledged
        self._lock = threading.RLock()  # paho may call on_publish from inside publish(), on this thread
        self._in_flight: dict[int, tuple[str, int]] = {}  # mid -> (kind, store id)
        self._early: set[int] = set()  # mids acknowledged before publish() returned them
        self._connected = threading.Event()
        self._send_status = threading.Event()
        self._t_connected_ns: int | None = None
        self._last_error: str | None = None

    def _client(self) -> paho.Client:
        m = self.mqtt
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=m.client_id or f"linewatch-{self.cfg.line}")
        client.will_set(self.status_topic, self._status_payload("offline", reason="connection lost"), m.qos, True)
        if m.username is not None:
            client.username_pw_set(m.username, self._password)
        client.reconnect_delay_set(m.reconnect_min_s, m.reconnect_max_s)
        client.on_connect, client.on_disconnect, client.on_publish = self._on_connect, self._on_disconnect, self._acked
        return client

    def run(self) -> None:
        store, state = open_reader(self.cfg.data_dir), DeliveryState(self.cfg.data_dir)
        saved = state.mqtt_cursors()
        cursors: dict[EventKind, int] = {k: self._resume(store, k, saved[k] if saved else None) for k in _KINDS}
        self.acked = {str(kind): cursor for kind, cursor in cursors.items()}
        client = self._client()
        client.connect_async(self.mqtt.host, self.mqtt.port, keepalive=self.mqtt.keepalive_s)
        client.loop_start()  # paho's thread connects, and reconnects with backoff
        status: bytes | None = None
        next_status = 0.0
        try:
            while not self.stop.wait(self.cfg.notify.poll_ms / 1000):
                for kind in _KINDS:
                    cursors[kind] = self._read(store, kind, cursors[kind])
                now = now_ns() / 1e9
                if self._send_status.is_set() or now >= next_status:
                    fresh = self._status_payload("online", **self._line_status(store))
                    if fresh != status or self._send_status.is_set():
                        sent = self._publish(client, ("status", 0, self.status_topic, fresh), retain=True)
                        status = fresh if sent else None
                        self._send_status.clear()
                    next_status = now + self.mqtt.status_s
                self._drain(client)
                self._record(state)
        finally:
            self._say_stopped(client)
            client.disconnect()
            client.loop_stop()
            self._record(state)
            state.close()
            store.close()

    def _say_stopped(self, client: paho.Client) -> None:
        """A clean stop sends no last will: the line says itself that it is offline, if the broker is there."""
        if not self._connected.is_set():
            return
        info = client.publish(self.status_topic, self._status_payload("offline", reason="stopped"), self.mqtt.qos, True)
        try:
            info.wait_for_publish(timeout=2.0)
        except (RuntimeError, ValueError) as exc:  # the broker went away meanwhile: its will says offline instead
            log.warning("mqtt: the stopped status was not published: %s", exc)

    def _resume(self, store: sqlite3.Connection, kind: EventKind, saved: int | None) -> int:
        """Where reading starts: the newest event on a first start; after a restart, past the last event the
        broker acknowledged, at most `buffer` events back (the ones skipped are counted as dropped)."""
        newest = last_id(store, kind)
        if saved is None or saved > newest:  # a first start, or a new store whose ids start again
            return newest
        start = newest_after(store, kind, saved, self.mqtt.buffer)
        self._drop(count_after(store, kind, saved) - count_after(store, kind, start))
        return start

    def _drop(self, n: int) -> None:
        if n > 0:
            self.dropped += n
            metrics.MQTT_DROPPED.inc(n)

    def _read(self, store: sqlite3.Connection, kind: EventKind, cursor: int) -> int:
        """New events of `kind` into the buffer (the oldest dropped and counted past its bound)."""
        while events := read_events(store, self.cfg.line, kind, cursor, 500):
            for e in events:
                topic = self.verdict_topic.format(camera=e.data["camera"]) if kind == "verdict" else self.alarm_topic
                with self._lock:
                    if len(self.buffer) >= self.mqtt.buffer:
                        self.buffer.popleft()
                        self._drop(1)
                    self.buffer.append((kind, e.store_id, topic, orjson.dumps(e.body(self.cfg.line))))
            cursor = events[-1].store_id
        return cursor

    def _drain(self, client: paho.Client) -> None:
        """Hand buffered messages to paho while connected, at most IN_FLIGHT unacknowledged at a time."""
        while self._connected.is_set():
            with self._lock:
                if not self.buffer or len(self._in_flight) >= IN_FLIGHT:
                    break
                message = self.buffer[0]
            if not self._publish(client, message):
                break
            with self._lock:
                self.buffer.popleft()
        with self._lock:
            metrics.MQTT_BUFFERED.set(len(self.buffer) + len(self._in_flight))

    def _publish(self, client: paho.Client, message: _Message, retain: bool = False) -> bool:
        if not self._connected.is_set():
            return False
        kind, store_id, topic, payload = message
        # never under our lock: paho's thread takes it in on_publish while holding paho's own
        info = client.publish(topic, payload, self.mqtt.qos, retain)
        queued = info.rc == paho.MQTT_ERR_NO_CONN and self.mqtt.qos > 0  # paho keeps it and sends it on reconnect
        if info.rc != paho.MQTT_ERR_SUCCESS and not queued:
            return False
        with self._lock:
            if info.mid in self._early:
                self._early.discard(info.mid)
                self._count(kind, store_id)
            else:
                self._in_flight[info.mid] = (kind, store_id)
        return True

    def _acked(self, _c: Any, _u: Any, mid: int, _rc: Any, _p: Any) -> None:
        with self._lock:
            sent = self._in_flight.pop(mid, None)
            if sent is None:
                self._early.add(mid)
            else:
                self._count(*sent)

    def _count(self, kind: str, store_id: int) -> None:
        self.published += 1
        metrics.MQTT_PUBLISHED.labels(kind).inc()
        if kind in self.acked:
            self.acked[kind] = max(self.acked[kind], store_id)

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self._last_error = f"broker refused the connection: {reason}"
            log.error("mqtt: %s", self._last_error)
            return
        log.info("mqtt: connected to %s:%d", self.mqtt.host, self.mqtt.port)
        self._t_connected_ns, self._last_error = now_ns(), None
        metrics.MQTT_CONNECTED.set(1)
        self._connected.set()
        self._send_status.set()

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        metrics.MQTT_CONNECTED.set(0)
        self._connected.clear()
        if not self.stop.is_set():
            self._last_error = f"connection lost: {reason}"
            log.warning("mqtt: %s; reconnecting, up to %d messages buffered", self._last_error, self.mqtt.buffer)

    def _line_status(self, store: sqlite3.Connection) -> dict[str, Any]:
        expected = [child_name(self.cfg, role, i) for role, i in line_children(self.cfg)]
        active = store.execute("SELECT count(*) FROM alarms WHERE acknowledged_by IS NULL").fetchone()[0]
        return {"processes_down": down(self.cfg.run_dir, expected), "alarms_active": int(active)}

    def _status_payload(self, state: str, **more: Any) -> bytes:
        return orjson.dumps({"state": state, "line": self.cfg.line, **more})

    def _record(self, state: DeliveryState) -> None:
        with self._lock:
            buffered = len(self.buffer) + len(self._in_flight)
            acked = dict(self.acked)
        state.mqtt(self._connected.is_set(), self.published, self.dropped, buffered, self._t_connected_ns,
                   self._last_error, acked)
