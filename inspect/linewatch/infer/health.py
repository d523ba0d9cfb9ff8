"""Model health: when the worker stops trusting its model, and how it follows the model file.

Any fault (cannot load, cannot run, NaN/inf or wrong-shaped output, over its latency budget) puts the
worker in rules-only mode: parts get the fail-safe's safe verdict until the model is healthy again,
i.e. a good file has been loaded, or `recover_after` batches in a row ran cleanly within budget.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from linewatch.config import ModelConfig, ModelHealthConfig
from linewatch.config.line import cpu_plan
from linewatch.model.onnx import Model, ModelError
from linewatch.model.runtime import SessionSettings

log = logging.getLogger(__name__)


@dataclass
class ModelHealth:
    """The rules-only state of one worker."""

    recover_after: int
    fault: str | None = None  # why the model is not trusted; None = healthy
    clean_batches: int = 0

    @property
    def rules_only(self) -> bool:
        return self.fault is not None

    def failed(self, reason: str) -> bool:
        """Record a fault; True when this enters rules-only mode (raise the alarm then)."""
        entered = self.fault is None
        self.fault, self.clean_batches = reason, 0
        return entered

    def ran_clean(self) -> bool:
        """Record a healthy batch; True when this leaves rules-only mode."""
        if self.fault is None:
            return False
        self.clean_batches += 1
        if self.clean_batches < self.recover_after:
            return False
        self.fault, self.clean_batches = None, 0
        return True

    def loaded(self) -> bool:
        """A good model file was loaded and warmed up; True when this leaves rules-only mode."""
        was = self.fault is not None
        self.fault, self.clean_batches = None, 0
        return was


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def load_model(mc: ModelConfig, settings: SessionSettings | None = None) -> Model:
    """Load and warm up the configured model (every prepared batch size): a model is only handed out whole."""
    model = Model(mc.path, mc.providers, cpu_plan(1, mc.intra_op_threads).threads, settings)
    model.warm_up()
    return model


class ModelFileWatch:
    """Follows the configured model file: a changed file (once it has stopped changing) is loaded
    and warmed up beside the running model in a thread; `poll()` hands the result over between batches."""

    def __init__(self, mc: ModelConfig, hc: ModelHealthConfig, settings: SessionSettings | None = None):
        self.mc, self.every, self.settings = mc, hc.reload_check_s, settings
        self.seen = _signature(mc.path)
        self._candidate: tuple[int, int, int] | None = None
        self._next_check = time.monotonic() + self.every
        self._thread: threading.Thread | None = None
        self._result: Model | ModelError | None = None

    def poll(self) -> Model | ModelError | None:
        """A freshly loaded Model, the ModelError of a failed load, or None when nothing changed."""
        if self._thread is not None:
            if self._thread.is_alive():
                return None
            self._thread, result, self._result = None, self._result, None
            return result
        now = time.monotonic()
        if now < self._next_check:
            return None
        self._next_check = now + self.every
        sig = _signature(self.mc.path)
        if sig == self.seen:
            self._candidate = None
            return None
        if sig != self._candidate and sig is not None:
            self._candidate = sig  # still being written? look again next time
            return None
        self.seen, self._candidate = sig, None
        log.info("model file %s changed: loading it beside the running model", self.mc.path)
        self._thread = threading.Thread(target=self._load, name="model-load", daemon=True)
        self._thread.start()
        return None

    def _load(self) -> None:
        try:
            self._result = load_model(self.mc, self.settings)
        except ModelError as exc:
            self._result = exc
