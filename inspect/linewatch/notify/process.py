"""The notify process: pushes the store's verdicts and alarms to plant systems (HTTP hooks, MQTT).

It only reads the store (read-only connections) and writes its own delivery state (`notify.db`); the
supervisor starts it when `notify.hooks` lists a hook or `notify.mqtt.enabled` is set. Each hook is a
thread with its own cursor, so a slow receiver holds back no other; MQTT runs on the main thread.
"""

from __future__ import annotations

import logging
import threading

from linewatch.config import LineConfig, SecretError
from linewatch.notify.hooks import HookSender
from linewatch.notify.mqtt import MqttLink
from linewatch.store.delivery import DeliveryState
from linewatch.wire.ready import mark_ready

log = logging.getLogger("notify")


class Notify:
    def __init__(self, cfg: LineConfig, index: int, stop: threading.Event):
        self.cfg, self.stop = cfg, stop
        self.broken: str | None = None  # the hook whose thread failed: the process exits for a restart

    def run(self) -> None:
        notify = self.cfg.notify
        try:  # every secret before anything is sent: a bad one stops the start with its reason
            secrets = [hook.secret() for hook in notify.hooks]
            password = notify.mqtt.password()
        except SecretError as exc:
            log.error("%s", exc)
            raise SystemExit(2) from None
        DeliveryState(self.cfg.data_dir).close()  # the state file exists before the api looks for it
        threads = [threading.Thread(target=self._guarded, args=(HookSender(self.cfg, hook, secret, self.stop),),
                                    name=f"hook-{hook.name}")
                   for hook, secret in zip(notify.hooks, secrets, strict=True)]
        for t in threads:
            t.start()
        mark_ready(self.cfg.run_dir, "notify", hooks=[h.name for h in notify.hooks], mqtt=notify.mqtt.enabled)
        try:
            if notify.mqtt.enabled:
                MqttLink(self.cfg, self.stop, password).run()
            else:
                self.stop.wait()
        finally:
            self.stop.set()
            for t in threads:  # a thread in the middle of a POST ends within its timeout
                t.join(timeout=self.cfg.supervisor.stop_timeout_s)
        if self.broken is not None:
            raise SystemExit(1)

    def _guarded(self, sender: HookSender) -> None:
        """A hook thread that fails takes the process down with it, so the supervisor restarts it (and alarms)
        rather than one hook silently stopping; its cursor is safe in the state file."""
        try:
            sender.run()
        except Exception:
            log.exception("hook %s failed; stopping the notify process for a restart", sender.hook.name)
            self.broken = sender.hook.name
            self.stop.set()
