"""Metric helpers: a group of observations lands in the same buckets as one observe() each."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram

from linewatch.metrics import observe_many

_BUCKETS = (0.001, 0.01, 0.1, 1.0)


def _samples(registry: CollectorRegistry, name: str) -> dict[tuple[str, str], float]:
    return {(s.name.removeprefix(name), s.labels.get("le", "")): s.value
            for m in registry.collect() for s in m.samples if not s.name.endswith("_created")}


def test_observe_many_matches_observe_bucket_by_bucket() -> None:
    amounts = [0.0, 0.0005, 0.001, 0.0010001, 0.05, 0.1, 0.99, 1.0, 3.5, 3.5, 120.0]  # bounds included, +Inf
    one, many = CollectorRegistry(), CollectorRegistry()
    by_one = Histogram("t_by_one_seconds", "each observed", ["stage"], buckets=_BUCKETS, registry=one)
    by_many = Histogram("t_by_many_seconds", "observed as a group", ["stage"], buckets=_BUCKETS, registry=many)
    for a in amounts:
        by_one.labels("record").observe(a)
    observe_many(by_many.labels("record"), amounts[:4])
    observe_many(by_many.labels("record"), amounts[4:])
    observe_many(by_many.labels("record"), [])
    got, want = _samples(many, "t_by_many_seconds"), _samples(one, "t_by_one_seconds")
    assert got.pop(("_sum", "")) == pytest.approx(want.pop(("_sum", "")))  # summed in another order
    assert got == want
    assert want[("_bucket", "0.001")] == 3 and want[("_bucket", "+Inf")] == len(amounts) and want[("_count", "")] == 11
