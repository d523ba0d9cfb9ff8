"""Every Prometheus metric of the line, in one place.

Processes write to prometheus-client's multiprocess directory (`PROMETHEUS_MULTIPROC_DIR`, set by the
supervisor before any child imports this module); the api process gathers them all on /metrics.
Each metric is listed in docs/metrics.md (a test keeps the two in agreement).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
_STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

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
STAGE_SECONDS = Histogram(
    "linewatch_stage_seconds", "Time a frame spent in one pipeline stage (acquire, transport, queue, preprocess, "
    "inference, failsafe; record, event); together they make up capture to committed verdict.", ["stage"],
    buckets=_STAGE_BUCKETS,
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
PLC_CLIENTS = Gauge(
    "linewatch_plc_clients", "Modbus TCP clients connected to the plc process.", multiprocess_mode="livesum"
)
PLC_REQUESTS = Counter("linewatch_plc_requests", "Modbus requests received, by function code.", ["function"])
PLC_EXCEPTIONS = Counter(
    "linewatch_plc_exceptions", "Modbus exception responses sent, by exception code.", ["code"]
)
PLC_ERRORS = Counter(
    "linewatch_plc_errors", "PLC requests refused or failed, by reason (docs/modbus.md, Errors).", ["reason"]
)
PLC_COMMANDS = Counter(
    "linewatch_plc_commands", "Commands from the PLC (trigger, lot, ack, reset_line_stop) by result.",
    ["command", "result"],
)
PLC_CLIENTS_REFUSED = Counter(
    "linewatch_plc_clients_refused", "Modbus TCP connections closed unanswered: their address is not in "
    "plc.clients.", ["address"]
)
REMOTE_WORKERS_REFUSED = Counter(
    "linewatch_remote_workers_refused", "Connections to infer.remote's ports refused: the worker's key is not "
    "enrolled.", ["process"]
)
PLC_RESULTS_OVERRUN = Counter(
    "linewatch_plc_results_overrun", "Results not queued for the PLC because the camera's results buffer was "
    "full (their rows are recorded all the same).", ["camera"]
)
ROWS_LOST = Counter(
    "linewatch_rows_lost", "Verdict rows not recorded: the store refused writes (full disk) with record.held_rows "
    "already held in memory.",
)
FRAME_SLOTS_RECLAIMED = Counter(
    "linewatch_frame_slots_reclaimed", "Frame ring slots taken back from a worker that held them past the deadline.",
    ["camera"],
)
DRIFT_STATISTIC = Gauge(
    "linewatch_drift_statistic", "A drift detector's CUSUM statistic over its calibrated threshold (a drift alarm "
    "at 1), per camera, signal and direction (up, down).", ["camera", "signal", "direction"],
    multiprocess_mode="mostrecent",
)
DRIFT_ACTIVE = Gauge(
    "linewatch_drift_active", "1 while a signal of the camera is in drift (its alarm not yet acknowledged).",
    ["camera", "signal"], multiprocess_mode="mostrecent",
)
ESTIMATED_ACCURACY = Gauge(
    "linewatch_estimated_accuracy", "Accuracy of the model's PASS/FAIL decisions estimated without labels from its "
    "calibrated probabilities (CBPE) over the last watch.window parts.", ["camera"], multiprocess_mode="mostrecent",
)
ESTIMATED_DEFECT_RATE = Gauge(
    "linewatch_estimated_defect_rate", "Share of truly defective parts estimated from the model's calibrated "
    "defect probabilities (CBPE) over the last watch.window parts.", ["camera"], multiprocess_mode="mostrecent",
)
REALISED_ACCURACY = Gauge(
    "linewatch_realised_accuracy", "Share of the last watch.window reviewed PASS/FAIL parts whose verdict the "
    "reviewer confirmed.", ["camera"], multiprocess_mode="mostrecent",
)
WATCH_SECONDS = Counter(
    "linewatch_watch_cpu_seconds", "CPU time spent on drift signals (infer) and detectors (record).", ["process"]
)
SHIP_LAG = Gauge(
    "linewatch_ship_lag_seconds", "Age of the oldest row of the line's store not yet in the central PostgreSQL "
    "(0 when every row is shipped), per table of the store.", ["table"], multiprocess_mode="liveall",
)
SHIP_ROWS = Counter(
    "linewatch_ship_rows", "Rows upserted into the central PostgreSQL, per table of the store.", ["table"]
)
SHIP_ERRORS = Counter(
    "linewatch_ship_errors", "Shipping passes that failed, by reason (PostgreSQL's error class, or store).",
    ["reason"],
)
SHIP_CONNECTED = Gauge(
    "linewatch_ship_connected", "1 while ship holds a working connection to the central PostgreSQL.",
    multiprocess_mode="liveall",
)
HOOK_DELIVERED = Counter("linewatch_hook_delivered", "Events a hook's receiver took (2xx answer).", ["hook"])
HOOK_FAILURES = Counter(
    "linewatch_hook_failures", "Failed hook delivery attempts (retried), by reason.", ["hook", "reason"]
)
HOOK_BACKLOG = Gauge(
    "linewatch_hook_backlog", "Store rows after a hook's cursor: events it has not yet delivered or filtered out.",
    ["hook"], multiprocess_mode="mostrecent",
)
MQTT_PUBLISHED = Counter("linewatch_mqtt_published", "MQTT messages the broker acknowledged, by kind.", ["kind"])
MQTT_DROPPED = Counter("linewatch_mqtt_dropped", "MQTT messages dropped from the full buffer while the broker was "
                       "away (oldest first).")
MQTT_BUFFERED = Gauge("linewatch_mqtt_buffered", "MQTT messages waiting for the broker (buffered or unacknowledged).",
                      multiprocess_mode="mostrecent")
MQTT_CONNECTED = Gauge("linewatch_mqtt_connected", "1 while the notify process is connected to the MQTT broker.",
                       multiprocess_mode="mostrecent")

ALL = (FRAMES_ACQUIRED, FRAMES_DROPPED, FRAMES_INSPECTED, VERDICTS, MESSAGES_REJECTED, LATE_VERDICTS, ALARMS,
       RESTARTS, INFERENCE_SECONDS, END_TO_END_SECONDS, MODEL_INFO, MODEL_UP, IMAGES_DROPPED, IMAGES_PRUNED,
       RULES_ONLY, FAILSAFE_OVERRIDES, PLC_CLIENTS, PLC_REQUESTS, PLC_EXCEPTIONS, PLC_ERRORS, PLC_COMMANDS,
       PLC_CLIENTS_REFUSED, PLC_RESULTS_OVERRUN,
       STAGE_SECONDS, FRAME_SLOTS_RECLAIMED, ROWS_LOST, DRIFT_STATISTIC, DRIFT_ACTIVE,
       ESTIMATED_ACCURACY, ESTIMATED_DEFECT_RATE, REALISED_ACCURACY, WATCH_SECONDS,
       SHIP_LAG, SHIP_ROWS, SHIP_ERRORS, SHIP_CONNECTED, HOOK_DELIVERED, HOOK_FAILURES,
       HOOK_BACKLOG, MQTT_PUBLISHED, MQTT_DROPPED, MQTT_BUFFERED, MQTT_CONNECTED)


def observe_many(histogram: Histogram, amounts: Iterable[float]) -> None:
    """`histogram.observe(a)` for each amount, with one increment per bucket touched rather than two per amount.

    record observes every row of a group commit; prometheus-client has no bulk observe, and each of its
    increments takes a lock and writes the multiprocess file. Same buckets and sum as `observe` (tested).
    """
    counts: dict[int, int] = {}
    total = 0.0
    bounds = histogram._upper_bounds
    for a in amounts:
        total += a
        if a == a:  # observe() puts NaN in no bucket
            i = bisect_left(bounds, a)  # the first bucket with amount <= bound, as observe() picks it
            counts[i] = counts.get(i, 0) + 1
    if not total and not counts:
        return
    histogram._raise_if_not_observable()  # type: ignore[no-untyped-call]
    histogram._sum.inc(total)
    for i, n in counts.items():
        histogram._buckets[i].inc(n)
