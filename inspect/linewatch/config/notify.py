"""Plant systems: outbound HTTP hooks and an MQTT broker the `notify` process feeds (see docs/integrations.md)."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from linewatch.config.base import _backoff, _Strict, _unique

Final = Literal["PASS", "FAIL", "REVIEW"]
Severity = Literal["info", "warning", "critical"]
_NAME = r"^[A-Za-z0-9_-]{1,32}$"


class SecretError(ValueError):
    """A hook secret or broker password cannot be used (missing, empty, or readable by others)."""


class HookConfig(_Strict):
    """One receiver: which events it gets, where, how they are signed and how hard delivery tries."""

    name: str = Field("hook", pattern=_NAME, description="Name of the hook in the delivery state, API and metrics.")
    url: str = Field("http://127.0.0.1:9000/linewatch", pattern=r"^https?://[^\s/]+\S*$", max_length=2048,
                     description="Where each event is POSTed (http:// or https://).")
    event: Literal["verdict", "alarm"] = Field(
        "verdict", description="What the hook gets: each recorded inspection (verdict) or each raised alarm; a "
        "receiver that wants both configures two hooks.")
    finals: tuple[Final, ...] = Field(("PASS", "FAIL", "REVIEW"), min_length=1, max_length=3,
                                      description="Verdict hooks: only inspections with one of these results.")
    cameras: tuple[str, ...] = Field((), max_length=64,
                                     description="Verdict hooks: only these cameras (empty = every camera).")
    recipes: tuple[str, ...] = Field((), max_length=64,
                                     description="Verdict hooks: only these recipes (empty = every recipe).")
    alarm_kinds: tuple[str, ...] = Field((), max_length=64,
                                         description="Alarm hooks: only these kinds (empty = every kind).")
    severities: tuple[Severity, ...] = Field(("info", "warning", "critical"), min_length=1, max_length=3,
                                             description="Alarm hooks: only alarms of these severities.")
    secret_file: Path | None = Field(None, description="File holding the HMAC-SHA256 signing secret (mode 0600, "
                                     "owner only); give this or secret_env.")
    secret_env: str | None = Field(None, pattern=r"^[A-Z_][A-Z0-9_]{0,63}$",
                                   description="Environment variable holding the signing secret.")
    start: Literal["latest", "first"] = Field(
        "latest", description="Where a new hook starts: events recorded from now on (latest) or every event "
        "already in the store (first). Later starts continue from the hook's saved cursor.")
    timeout_s: float = Field(5.0, gt=0, le=60, description="Time a receiver has to answer one POST.")
    retry_initial_s: float = Field(0.5, gt=0, le=60, description="Wait after the first failed attempt; doubles "
                                   "after each further failure up to retry_max_s. Delivery never gives up.")
    retry_max_s: float = Field(60.0, gt=0, le=3600, description="Longest wait between two attempts.")
    alarm_after_s: float = Field(300.0, ge=1, le=86_400, description="A receiver failing this long raises a "
                                 "hook_down alarm (once per outage).")

    @model_validator(mode="after")
    def _one_secret_source(self) -> HookConfig:
        if (self.secret_file is None) == (self.secret_env is None):
            raise ValueError(f"hook {self.name}: give exactly one of secret_file, secret_env")
        return self

    @model_validator(mode="after")
    def _retry_bounds_ordered(self) -> HookConfig:
        _backoff(self.retry_initial_s, self.retry_max_s, f"hook {self.name}: retry_initial_s/retry_max_s")
        return self

    def secret(self) -> bytes:
        """The signing key, read when the notifier starts (never logged, never shown by the API)."""
        if self.secret_file is not None:
            return read_secret_file(self.secret_file, f"hook {self.name}")
        value = os.environ.get(self.secret_env or "", "")
        if not value:
            raise SecretError(f"hook {self.name}: environment variable {self.secret_env} is not set or empty")
        return value.encode()


class MqttConfig(_Strict):
    """The broker verdicts, alarms and the line's status are published to (Unified Namespace topics)."""

    enabled: bool = Field(False, description="Publish to an MQTT broker.")
    host: str = Field("127.0.0.1", min_length=1, max_length=253, description="Broker address.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port.")
    client_id: str = Field("", max_length=64, description="MQTT client id (empty = linewatch-<line>).")
    username: str | None = Field(None, max_length=256, description="User name at the broker (none = anonymous).")
    password_file: Path | None = Field(None, description="File holding the broker password (mode 0600).")
    topic_prefix: str = Field("linewatch", pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$", max_length=128,
                              description="Root of the topic tree: <prefix>/<line>/<camera>/verdict, "
                              "<prefix>/<line>/alarm, <prefix>/<line>/status.")
    qos: Literal[0, 1, 2] = Field(1, description="Quality of service of every message.")
    keepalive_s: int = Field(10, ge=2, le=3600, description="MQTT keep-alive; the broker publishes the offline "
                             "last will when the line is silent for 1.5 times this (at once when its socket closes).")
    buffer: int = Field(10_000, ge=10, le=1_000_000, description="Messages held while the broker is away; beyond "
                        "it the oldest are dropped and counted (linewatch_mqtt_dropped).")
    reconnect_min_s: int = Field(1, ge=1, le=60, description="First wait before reconnecting (whole seconds); "
                                 "doubles up to reconnect_max_s.")
    reconnect_max_s: int = Field(30, ge=1, le=3600, description="Longest wait between reconnect attempts.")
    status_s: float = Field(5.0, gt=0, le=3600, description="How often the retained status is refreshed when "
                            "something in it changed (processes down, active alarms).")

    @model_validator(mode="after")
    def _reconnect_bounds_ordered(self) -> MqttConfig:
        _backoff(self.reconnect_min_s, self.reconnect_max_s, "mqtt.reconnect_min_s/reconnect_max_s")
        return self

    @model_validator(mode="after")
    def _password_needs_a_user(self) -> MqttConfig:
        if self.password_file is not None and self.username is None:
            raise ValueError("mqtt.password_file needs mqtt.username")
        return self

    def password(self) -> str | None:
        """The broker password, read when the notifier starts (never logged, never shown by the API)."""
        if not self.enabled or self.password_file is None:
            return None
        return read_secret_file(self.password_file, "mqtt").decode()


class NotifyConfig(_Strict):
    """Pushed events for plant systems; the notify process runs only when a hook or MQTT is configured."""

    hooks: list[HookConfig] = Field(default_factory=list, max_length=32, description="Outbound HTTP hooks.")
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="MQTT publishing.")
    poll_ms: float = Field(200.0, ge=10, le=10_000, description="How often the store is read for new events.")

    @model_validator(mode="after")
    def _hook_names_unique(self) -> NotifyConfig:
        _unique([h.name for h in self.hooks], "hook names")
        return self

    @property
    def active(self) -> bool:
        return bool(self.hooks) or self.mqtt.enabled


def read_secret_file(path: Path, what: str) -> bytes:
    """A secret file's content (trailing newline removed); refused when group or others may read it."""
    try:
        mode = path.stat().st_mode
        value = path.read_bytes().rstrip(b"\r\n")
    except OSError as exc:
        raise SecretError(f"{what}: cannot read the secret file {path}: {exc.strerror}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretError(f"{what}: secret file {path} has mode {stat.S_IMODE(mode):04o}; it must be readable by "
                          "its owner only (chmod 600)")
    if not value:
        raise SecretError(f"{what}: secret file {path} is empty")
    return value


def unknown_cameras(notify: NotifyConfig, cameras: list[str]) -> list[str]:
    """Cameras a hook filters on that the line does not have (a typo would silently deliver nothing)."""
    return sorted({c for h in notify.hooks for c in h.cameras if c not in cameras})
