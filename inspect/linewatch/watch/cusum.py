"""Two-sided CUSUM on a standardised signal, its threshold calibrated to an expected run time between false alarms.

Why CUSUM: against a fixed reference it is the fastest detector of a lasting shift for a given false-alarm rate
(Lorden's optimality), it has one threshold per side and costs two additions a part. Page-Hinkley compares with
the stream's own running mean, so a slow ramp is absorbed into its reference; ADWIN and windowed KS/Wasserstein
tests state a confidence per window, not a run time between false alarms, and alarm by chance as windows
multiply.

Calibration: the average run length (ARL) of a CUSUM whose increments are drawn from the reference is computed
with the Markov chain of Brook and Evans (1972) over the reference's own empirical distribution
(no normality assumed), and the threshold is found by bisection for the target ARL. The increments are shifted
towards the alarm by two standard errors of the reference mean (`REFERENCE_SLACK_SE`): the stated false-alarm
rate holds unless the reference learnt from N parts is off by more than that (one reference in 44).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from linewatch.config.watch import REFERENCE_SLACK_SE

STATES = 200  # grid points between 0 and the threshold: ARL within ~10 % of simulation (tested)


def average_run_length(support: np.ndarray, weights: np.ndarray, h: float, states: int = STATES) -> float:
    """The ARL (parts until S = max(0, S + x) first reaches h, from S = 0) with increments x drawn from
    (support, weights). S lives on a grid of `states` points from 0 to h (h absorbs); a step that lands between
    two points is split between them in proportion, so the chain keeps the increments' mean exactly and a small
    step (a rare-event rate's many small decrements) is not rounded away.

    An increment moves S by the same number of grid steps from every point (the split too: the points are whole
    steps apart), so the chain is one kernel over moves: row i of the transitions is the kernel shifted by i,
    S past h is absorbed, and what would go below 0 lands on 0 (the rest of the row). Built that way rather than
    point by point it costs a tenth as much: record calibrates a few hundred of these when a reference is learnt,
    beside the running line."""
    values, inverse = np.unique(support, return_inverse=True)
    mass = np.bincount(inverse, weights=weights) / weights.sum()
    steps = values / (h / states)  # an increment in grid steps: whole steps and a fraction split to the next
    whole = np.floor(steps)
    frac = steps - whole
    whole = np.clip(whole, -states - 1, states + 1).astype(np.int64)  # beyond: from anywhere to 0, or absorbed
    low = int(whole.min())
    n = int(whole.max()) - low + 2
    kernel = np.zeros(n + 1)  # mass of each move from `low`; a last 0 for the moves it does not hold
    kernel[:n] = np.bincount(whole - low, (1 - frac) * mass, n) + np.bincount(whole - low + 1, frac * mass, n)
    move = _moves(states) - low  # from point i to point j >= 1
    into = kernel[np.where((move < 0) | (move >= n), n, move)]
    beyond = np.append(np.cumsum(kernel[n - 1::-1])[::-1], 0.0)  # mass of the moves from index k on
    absorbed = beyond[np.clip(states - np.arange(states) - low, 0, n)]
    chain = np.empty((states, states))  # I - P over the grid points
    chain[:, 1:] = -into
    chain[:, 0] = into.sum(axis=1) + absorbed - 1.0
    chain[np.diag_indices(states)] += 1.0
    try:
        arl = np.linalg.solve(chain, np.ones(states))
    except np.linalg.LinAlgError:  # no way out of the chain: increments never positive
        return math.inf
    value = float(arl[0])
    return value if value > 0 and math.isfinite(value) else math.inf


@lru_cache(maxsize=4)
def _moves(states: int) -> np.ndarray:
    """j - i for every point i and every point j >= 1 of the grid (read-only: shared between calls)."""
    moves = np.arange(1, states)[None, :] - np.arange(states)[:, None]
    moves.flags.writeable = False
    return moves


def threshold_for(support: np.ndarray, weights: np.ndarray, target_arl: float) -> float:
    """The smallest threshold h (within 1 %) whose ARL from the increments reaches target_arl.

    Bisection in a bracket around Siegmund's approximation for normal increments (the ARL grows about
    exponentially in h, so the bracket is found in a few steps whatever the distribution)."""
    positive = weights > 0
    if not np.any(support[positive] > 0):
        return float(max(support.max(initial=0.0), 0.0)) + 1.0  # S never grows: any threshold is silent
    mean = float((support * weights).sum() / weights.sum())
    drift = max(-mean, 1e-3)
    guess = max(math.log(max(2 * drift * drift * target_arl, 2.0)) / (2 * drift) - 1.166, 0.5)
    lo, hi = guess / 2, guess
    while average_run_length(support, weights, hi) < target_arl:
        lo, hi = hi, hi * 1.5
        if hi > 1e6:
            return hi
    while average_run_length(support, weights, lo) >= target_arl and lo > 1e-3:
        hi, lo = lo, lo / 1.5
    while hi - lo > 0.01 * hi:
        mid = (lo + hi) / 2
        if average_run_length(support, weights, mid) < target_arl:
            lo = mid
        else:
            hi = mid
    return hi


@dataclass
class Side:
    """One direction of the CUSUM: the statistic, and the parts and sum since it last stood at 0 (the window
    the shift is estimated from when it alarms)."""

    h: float
    s: float = 0.0
    n: int = 0
    total: float = 0.0

    def update(self, x: float, value: float) -> bool:
        """Add increment x (the signal's raw value is `value`); True when the statistic crosses h."""
        self.s += x
        if self.s <= 0.0:
            self.s, self.n, self.total = 0.0, 0, 0.0
            return False
        self.n += 1
        self.total += value
        return self.s > self.h

    def reset(self) -> None:
        self.s, self.n, self.total = 0.0, 0, 0.0


@dataclass
class Cusum:
    """Two-sided CUSUM of z = (value - mean) / sd with allowance k (in sd), thresholds per side."""

    mean: float
    sd: float
    k: float
    up: Side
    down: Side

    @classmethod
    def calibrated(cls, support: np.ndarray, weights: np.ndarray, k: float, target_arl: float,
                   reference_parts: int) -> Cusum:
        """Thresholds for each side so that, on the reference's distribution, each alone alarms once in
        target_arl parts; the reference mean's standard error (reference_parts) is allowed for."""
        total = weights.sum()
        mean = float((support * weights).sum() / total)
        sd = float(math.sqrt(max(((support - mean) ** 2 * weights).sum() / total, 0.0)))
        return cls.from_moments(support, weights, mean, sd, k, target_arl, reference_parts)

    @classmethod
    def from_moments(cls, support: np.ndarray, weights: np.ndarray, mean: float, sd: float, k: float,
                     target_arl: float, reference_parts: int) -> Cusum:
        """As `calibrated`, with the standardisation given (a floor on sd for a signal that hardly moves). The
        allowance must exceed the slack (the config checks it), else no threshold is ever reached."""
        z = (support - mean) / sd
        slack = REFERENCE_SLACK_SE / math.sqrt(reference_parts)
        return cls(mean, sd, k, Side(threshold_for(z - k + slack, weights, target_arl)),
                   Side(threshold_for(-z - k + slack, weights, target_arl)))

    def update(self, value: float) -> str | None:
        """Feed one part's value; the side that alarms ('up' or 'down'), else None."""
        z = (value - self.mean) / self.sd
        if self.up.update(z - self.k, value):
            return "up"
        if self.down.update(-z - self.k, value):
            return "down"
        return None

    def reset(self) -> None:
        self.up.reset()
        self.down.reset()
