"""Micro-batching policy of an inference worker: how long to wait for more frames before running.

The worker always takes every frame already queued (up to `max_batch`) without waiting. Whether
it then waits for more is this policy's decision:

- `batch_wait_ms` set (fixed policy): wait until the batch is full or its first frame has waited
  that long. `0` never waits.
- `batch_wait_ms` unset (adaptive, the default): wait only when it pays. From the measured
  interval between frames (their send times, so a busy worker does not bias it) and the measured
  model time per batch size, it waits only while frames arrive faster than the worker can run
  them one at a time (interval < t(1)); below that rate every frame runs at once, so at low rates
  the worker never waits. When it does wait, it waits no longer than the batch takes to fill
  ((max_batch - queued) x interval) and never past the latency target: the oldest frame's age plus
  the predicted model time of a full batch stay within `latency_target_ms`. Batching then costs
  at most the target in latency and buys throughput exactly when the worker is near saturation.

Pure logic, fed with timings: the worker calls `arrived`, `ran` and `wait_ms`.
"""

from __future__ import annotations

_SMOOTHING = 0.1  # EWMA weight of a new observation: follows rate changes within ~10 batches


class BatchPolicy:
    def __init__(self, max_batch: int, batch_wait_ms: float | None, latency_target_ms: float):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.max_batch = max_batch
        self.batch_wait_ms = batch_wait_ms
        self.latency_target_ms = latency_target_ms
        self.interval_ms: float | None = None  # smoothed interval between frame send times
        self._last_sent_ns: int | None = None
        self._run_ms: list[float | None] = [None] * (max_batch + 1)  # smoothed model time by batch size

    def arrived(self, t_sent_ns: int) -> None:
        """A frame sent at `t_sent_ns` reached the worker (frames in send order per camera)."""
        last, self._last_sent_ns = self._last_sent_ns, t_sent_ns
        if last is None or t_sent_ns < last:  # first frame, or several cameras interleaved out of order
            return
        self.interval_ms = _ewma(self.interval_ms, (t_sent_ns - last) / 1e6)

    def ran(self, size: int, ms: float) -> None:
        """The model ran a batch of `size` frames in `ms`."""
        if 1 <= size <= self.max_batch:
            self._run_ms[size] = _ewma(self._run_ms[size], ms)

    def predicted_ms(self, size: int) -> float | None:
        """Model time of a batch of `size`: measured, or scaled from the nearest measured size."""
        known = [(n, t) for n, t in enumerate(self._run_ms) if t is not None]
        if not known:
            return None
        if self._run_ms[size] is not None:
            return self._run_ms[size]
        n, t = min(known, key=lambda nt: abs(nt[0] - size))
        return t * size / n if size > n else t  # linear in size: pessimistic upward, never below a smaller batch

    def wait_ms(self, queued: int, oldest_age_ms: float) -> float:
        """How much longer to wait for frames, with `queued` in hand, the first `oldest_age_ms` old."""
        if queued >= self.max_batch or queued == 0:
            return 0.0
        if self.batch_wait_ms is not None:
            return max(0.0, self.batch_wait_ms - oldest_age_ms)
        t1, t_full, interval = self.predicted_ms(1), self.predicted_ms(self.max_batch), self.interval_ms
        if t1 is None or t_full is None or interval is None or interval >= t1:
            return 0.0  # unmeasured yet, or the worker keeps up frame by frame: never wait
        fill = (self.max_batch - queued) * interval
        slack = self.latency_target_ms - t_full - oldest_age_ms
        return max(0.0, min(fill, slack))


def _ewma(old: float | None, new: float) -> float:
    return new if old is None else old + _SMOOTHING * (new - old)
