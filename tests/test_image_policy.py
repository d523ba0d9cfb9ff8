"""One image-keeping policy for infer (which sends pixels) and record (which writes them)."""

from __future__ import annotations

import time

import pytest

from linewatch.config.line import RecordConfig
from linewatch.store.images import ImagePolicy


@pytest.mark.parametrize(
    ("final", "seq", "pass_samples", "kept"),
    [
        ("FAIL", 7, True, True),
        ("REVIEW", 7, False, True),  # a disk running low never costs a FAIL or REVIEW its evidence
        ("PASS", 7, True, False),
        ("PASS", 100, True, True),  # every 100th PASS as a sample
        ("PASS", 100, False, False),  # ... but not while the disk runs low
    ],
)
def test_which_images_are_kept(final: str, seq: int, pass_samples: bool, kept: bool) -> None:
    assert ImagePolicy(RecordConfig(pass_sample_every=100)).keeps(final, seq, pass_samples) is kept


def test_no_pass_samples_when_sampling_is_off() -> None:
    assert not ImagePolicy(RecordConfig(pass_sample_every=0)).keeps("PASS", 0)


def test_the_live_view_is_refreshed_at_most_live_view_hz_per_camera() -> None:
    policy = ImagePolicy(RecordConfig(live_view_hz=10))
    assert policy.live_due("cam0") and not policy.live_due("cam0")
    assert policy.live_due("cam1")  # each camera on its own
    time.sleep(0.11)
    assert policy.live_due("cam0")
    assert not ImagePolicy(RecordConfig(live_view_hz=0)).live_due("cam0")
