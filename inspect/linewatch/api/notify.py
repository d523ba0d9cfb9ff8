"""`GET /api/notify`: how far each HTTP hook and the MQTT link have delivered (docs/integrations.md).

Read from the notify process's own state file (`notify.db`) and the config; never a secret, nor a hook's
URL (it may carry credentials): a hook is named by its `name`.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from linewatch.api.body import JsonRoute
from linewatch.config import LineConfig
from linewatch.store.delivery import read_state


class HookState(BaseModel):
    name: str = Field(description="The hook's name in the config.")
    event: Literal["verdict", "alarm"] = Field(description="What the hook delivers.")
    cursor: int | None = Field(description="Store id (inspections or alarms) of the last event delivered or "
                               "filtered out; null before the notify process first ran it.")
    backlog: int = Field(description="Store rows after the cursor, still to deliver or filter out.")
    delivered: int = Field(description="Events the receiver took (2xx answer).")
    skipped: int = Field(description="Rows the hook's filters left out.")
    failures: int = Field(description="Failed attempts (each retried).")
    last_status: int | None = Field(description="HTTP status of the last attempt (null: no answer).")
    last_error: str | None = Field(description="Why the last attempt failed; null once an attempt succeeds.")
    last_key: str | None = Field(description="Idempotency key of the last event delivered.")
    t_last_attempt_ns: int | None = Field(description="When the last attempt was made (ns since the epoch).")
    t_last_delivered_ns: int | None = Field(description="When the last event was taken.")
    failing_since_ns: int | None = Field(description="Start of the current run of failures; null while delivering.")


class MqttState(BaseModel):
    enabled: bool = Field(description="notify.mqtt.enabled.")
    connected: bool = Field(description="Connected to the broker at the last update.")
    published: int = Field(description="Messages the broker acknowledged since the notify process started.")
    dropped: int = Field(description="Messages dropped since the notify process started: from the full buffer, "
                         "or more than the buffer's worth recorded while it was down.")
    verdict_cursor: int | None = Field(description="Store id of the newest inspection the broker acknowledged.")
    alarm_cursor: int | None = Field(description="Store id of the newest alarm the broker acknowledged.")
    buffered: int = Field(description="Messages waiting for the broker.")
    t_connected_ns: int | None = Field(description="When the current or last connection was made.")
    last_error: str | None = Field(description="Why the broker was last lost or refused the connection.")
    t_ns: int | None = Field(description="When this state was written (every notify.poll_ms while running).")


class NotifyState(BaseModel):
    hooks: list[HookState] = Field(description="Every configured hook, in config order.")
    mqtt: MqttState


def notify_router(cfg: LineConfig) -> APIRouter:
    router = APIRouter(prefix="/api", route_class=JsonRoute)

    @router.get("/notify", response_model=NotifyState)
    def notify() -> NotifyState:
        """Delivery state of the HTTP hooks and the MQTT link, as the notify process last recorded it."""
        hooks, mqtt = read_state(cfg.data_dir)
        blank = {"cursor": None, "backlog": 0, "delivered": 0, "skipped": 0, "failures": 0, "last_status": None,
                 "last_error": None, "last_key": None, "t_last_attempt_ns": None, "t_last_delivered_ns": None,
                 "failing_since_ns": None}
        states = []
        for h in cfg.notify.hooks:
            saved = hooks.get(h.name, {})
            states.append(HookState(**{**blank, **(saved if saved.get("event") == h.event else {}),
                                       "name": h.name, "event": h.event}))
        link = {"connected": False, "published": 0, "dropped": 0, "buffered": 0, "t_connected_ns": None,
                "last_error": None, "t_ns": None, "verdict_cursor": None, "alarm_cursor": None, **(mqtt or {})}
        link.pop("id", None)
        return NotifyState(hooks=states, mqtt=MqttState(enabled=cfg.notify.mqtt.enabled, **link))

    return router
