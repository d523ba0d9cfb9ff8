"""Every Prometheus metric of the line, in one place.

Processes write to prometheus-client's multiprocess directory (`PROMETHEUS_MULTIPROC_DIR`, set by the
supervisor before any child imports this module); the api process gathers them all on /metrics.
Each metric is listed in docs/metrics.md (a test keeps the two in agreement).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)

FRAMES_ACQUIRED = Counter("linewatch_frames_acquired", "Frames produced by a camera source.", ["camera"])
FRAMES_DROPPED = Counter(
    "linewatch_frames_dropped", "Frames not sent to inference (recorded as not inspected).", ["camera", "reason"]
)
FRAMES_INSPECTED = Counter("linewatch_frames_inspected", "Frames decided by an inference worker.", ["camera"])
VERDICTS = Counter(
    "linewatch_verdicts", "Verdicts committed to the store.", ["camera", "final", "decided_by"]
)
MESSAGES_REJECTED = Counter(
    "linewatch_messages_rejected", "Malformed messages refused at a process boundary.", ["process", "reason"]
)
LATE_VERDICTS = Counter(
    "linewatch_late_verdicts", "Verdicts that arrived after their deadline had already failed the part.",
    ["camera"],
)
ALARMS = Counter("linewatch_alarms", "Alarms raised.", ["kind"])
RESTARTS = Counter("linewatch_process_restarts", "Child processes restarted by the supervisor.", ["process"])
INFERENCE_SECONDS = Histogram(
    "linewatch_inference_seconds", "Model run time per batch.", buckets=_LATENCY_BUCKETS
)
END_TO_END_SECONDS = Histogram(
    "linewatch_end_to_end_seconds", "Capture to committed verdict.", ["camera"], buckets=_LATENCY_BUCKETS
)
MODEL_INFO = Gauge(
    "linewatch_model_info", "Model in use by an inference worker (value 1).",
    ["worker", "model", "sha256", "provider"], multiprocess_mode="liveall",
)
MODEL_UP = Gauge(
    "linewatch_model_up", "1 when the worker's model is loaded and healthy, 0 when it runs on rules alone.",
    ["worker"], multiprocess_mode="liveall",
)
RULES_ONLY = Gauge(
    "linewatch_rules_only", "1 while the worker runs on rules alone (model down, faulty or too slow).",
    ["worker"], multiprocess_mode="liveall",
)
FAILSAFE_OVERRIDES = Counter(
    "linewatch_failsafe_overrides", "Verdicts decided by a fail-safe rule instead of the model.", ["rule", "final"]
)
IMAGES_DROPPED = Counter(
    "linewatch_images_dropped", "Kept images skipped because the image writer was behind (row kept).",
    ["camera", "final"],
)
IMAGES_PRUNED = Counter("linewatch_images_pruned", "Kept images removed by retention (quota or age).")

ALL = (FRAMES_ACQUIRED, FRAMES_DROPPED, FRAMES_INSPECTED, VERDICTS, MESSAGES_REJECTED, LATE_VERDICTS, ALARMS,
       RESTARTS, INFERENCE_SECONDS, END_TO_END_SECONDS, MODEL_INFO, MODEL_UP, IMAGES_DROPPED, IMAGES_PRUNED,
       RULES_ONLY, FAILSAFE_OVERRIDES)
