"""The simple part generator: deterministic, with truth that matches the pixels."""

from __future__ import annotations

import numpy as np

from linewatch.emulator.parts import DEFECT_TYPES, PartEmulator


def test_same_seed_same_parts_other_seed_other_parts() -> None:
    a, b, c = PartEmulator(seed=1), PartEmulator(seed=1), PartEmulator(seed=2)
    np.testing.assert_array_equal(a.render(5).pixels, b.render(5).pixels)
    assert a.render(5).truth == b.render(5).truth
    assert not np.array_equal(a.render(5).pixels, c.render(5).pixels)


def test_defect_rate_and_truth() -> None:
    emu = PartEmulator(width=200, height=160, seed=4, defect_rate=0.3)
    parts = [emu.render(i) for i in range(400)]
    assert all(p.pixels.shape == (160, 200) and p.pixels.dtype == np.uint8 for p in parts)
    defects = [p for p in parts if p.truth["label"] == "defect"]
    assert 0.22 < len(defects) / len(parts) < 0.38
    assert {p.truth["type"] for p in defects} == set(DEFECT_TYPES)
    for p in defects:
        x, y, w, h = p.truth["region"]
        assert 0 <= x < 200 and 0 <= y < 160 and w > 0 and h > 0


def test_defect_darkens_its_region() -> None:
    emu = PartEmulator(seed=9, defect_rate=1.0)
    part = emu.render(0)
    x, y, w, h = part.truth["region"]
    clean = PartEmulator(seed=9, defect_rate=0.0).render(0)
    region = (slice(y, y + h), slice(x, x + w))
    assert part.pixels[region].astype(float).mean() < clean.pixels[region].astype(float).mean() - 10


def test_exposure_scales_brightness() -> None:
    dim = PartEmulator(seed=1, exposure_us=2500).render(0).pixels.mean()
    normal = PartEmulator(seed=1, exposure_us=5000).render(0).pixels.mean()
    assert dim < 0.6 * normal
