"""Outbound HTTP hooks: each hook's events POSTed one at a time, in store order, until the receiver takes each.

A hook is a cursor over the store (`events`): the next event is sent, retried with exponential backoff for as
long as it takes, and only a 2xx answer moves the cursor past it (`state`). So a receiver down for an hour,
or a notifier restarted, loses nothing and sees nothing out of order; a notifier killed between the answer
and the cursor's move sends that one event again, under the same `Idempotency-Key`.

Each request is signed: `X-Linewatch-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body>`
(docs/integrations.md shows how a receiver checks it and refuses replays).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time

import orjson
import requests
import zmq

from linewatch import metrics
from linewatch.clock import now_ns
from linewatch.config import HookConfig, LineConfig
from linewatch.notify.events import Event, count_after, last_id, read_events
from linewatch.store.delivery import DeliveryState
from linewatch.store.queries import open_reader
from linewatch.wire import Endpoints
from linewatch.wire.channels import AlarmSender

log = logging.getLogger("notify")
SIGNATURE_HEADER = "X-Linewatch-Signature"
PAGE = 200  # store rows read per query


def sign(secret: bytes, t: int, body: bytes) -> str:
    """The signature header's value for `body` sent at unix time `t` (the time is signed too: replay-safe)."""
    mac = hmac.new(secret, str(t).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def matches(hook: HookConfig, event: Event) -> bool:
    """The hook's filters: results, cameras and recipes for verdicts; kinds and severities for alarms."""
    d = event.data
    if event.kind == "verdict":
        return (d["final"] in hook.finals and (not hook.cameras or d["camera"] in hook.cameras)
                and (not hook.recipes or d["recipe"] in hook.recipes))
    return d["severity"] in hook.severities and (not hook.alarm_kinds or d["kind"] in hook.alarm_kinds)


class HookSender:
    """One hook's delivery loop (a thread of the notify process, with its own connections)."""

    def __init__(self, cfg: LineConfig, hook: HookConfig, secret: bytes, stop: threading.Event):
        self.cfg, self.hook, self.stop = cfg, hook, stop
        self._secret = secret
        self._failing_since: int | None = None
        self._alarmed = False

    def run(self) -> None:
        hook, poll_s = self.hook, self.cfg.notify.poll_ms / 1000
        self.store, self.state = open_reader(self.cfg.data_dir), DeliveryState(self.cfg.data_dir)
        self.alarms = AlarmSender(zmq.Context.instance(), Endpoints(self.cfg.run_dir), "notify")
        self.session = requests.Session()
        try:
            newest = last_id(self.store, hook.event)
            cursor = self.state.cursor(hook.name, hook.event, 0 if hook.start == "first" else newest)
            if cursor > newest:  # the store was replaced by a new one: its ids start again
                log.warning("hook %s: the store's newest %s id is %d, below the hook's cursor %d (a new store); "
                            "delivering from its first event", hook.name, hook.event, newest, cursor)
                cursor = 0
                self.state.passed(hook.name, cursor, 0)
            log.info("hook %s: %s events after store id %d", hook.name, hook.event, cursor)
            while not self.stop.is_set():
                self._backlog(cursor)
                events = read_events(self.store, self.cfg.line, hook.event, cursor, PAGE)
                if not events:
                    self.stop.wait(poll_s)
                    continue
                cursor = self._send_page(events, cursor)
        finally:
            self.session.close()
            self.alarms.close()
            self.state.close()
            self.store.close()

    def _backlog(self, cursor: int) -> None:
        backlog = count_after(self.store, self.hook.event, cursor)
        metrics.HOOK_BACKLOG.labels(self.hook.name).set(backlog)
        self.state.backlog(self.hook.name, backlog)

    def _send_page(self, events: list[Event], cursor: int) -> int:
        """Deliver the page's matching events in order; the new cursor (before an undelivered one when stopping)."""
        skipped = 0
        for event in events:
            if not matches(self.hook, event):
                cursor, skipped = event.store_id, skipped + 1
                continue
            status = self._deliver(event, cursor)
            if status is None:  # stopping: the event stays after the cursor
                break
            self.state.delivered(self.hook.name, event.store_id, event.key, status, skipped)
            metrics.HOOK_DELIVERED.labels(self.hook.name).inc()
            cursor, skipped = event.store_id, 0
        if skipped:
            self.state.passed(self.hook.name, cursor, skipped)
        return cursor

    def _deliver(self, event: Event, cursor: int) -> int | None:
        """POST until a 2xx answer (its status) or the stop event (None); every failure counted and recorded."""
        hook = self.hook
        body = orjson.dumps(event.body(self.cfg.line, hook.name))
        delay = hook.retry_initial_s
        while True:
            headers = {"Content-Type": "application/json", "Idempotency-Key": event.key,
                       SIGNATURE_HEADER: sign(self._secret, int(time.time()), body)}
            status: int | None = None
            try:
                answer = self.session.post(hook.url, data=body, headers=headers, timeout=hook.timeout_s,
                                           allow_redirects=False)
                status = answer.status_code
                if 200 <= status < 300:
                    self._recovered()
                    return status
                reason, error = f"http_{status // 100}xx", f"HTTP {status} {answer.reason}"
            except requests.Timeout:
                reason, error = "timeout", f"no answer within {hook.timeout_s:g} s"
            except requests.ConnectionError as exc:
                reason, error = "connection", f"cannot connect: {type(exc).__name__}"
            except requests.RequestException as exc:
                reason, error = "request", f"request failed: {type(exc).__name__}"
            metrics.HOOK_FAILURES.labels(hook.name, reason).inc()
            self._failing_since = self._failing_since or now_ns()
            self.state.failed(hook.name, status, error, self._failing_since)
            self._backlog(cursor)  # the backlog keeps growing while the receiver is away
            log.warning("hook %s: %s delivering %s; next attempt in %.1f s", hook.name, error, event.key, delay)
            self._alarm_if_down(error)
            if self.stop.wait(delay):
                return None
            delay = min(delay * 2, hook.retry_max_s)

    def _alarm_if_down(self, error: str) -> None:
        assert self._failing_since is not None
        down_s = (now_ns() - self._failing_since) / 1e9
        if not self._alarmed and down_s >= self.hook.alarm_after_s:
            self.alarms.raise_alarm("hook_down", f"hook {self.hook.name}: no delivery for {down_s:.0f} s ({error}); "
                               "events wait in the store")
            self._alarmed = True

    def _recovered(self) -> None:
        if self._failing_since is not None:
            log.info("hook %s: the receiver takes events again", self.hook.name)
        self._failing_since, self._alarmed = None, False
