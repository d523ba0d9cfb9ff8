"""Scene emulator: products, defects with truth, camera effects, scenarios, and the default unchanged."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from linewatch.acquire.sources.emulated import EmulatorCamera
from linewatch.config import CameraConfig
from linewatch.emulator.parts import PartEmulator, SceneEmulator
from linewatch.emulator.products import inject_defect, render_product
from linewatch.emulator.scene import DEFECT_KINDS, Scenario, Scene, SceneError, conditions_at, load_scene
from tests.conftest import REPO

SCENES = sorted((REPO / "cameras" / "scenes").glob("*.yaml"))


def _scene(**kw: object) -> Scene:
    return Scene.model_validate(kw)


def test_at_least_three_scene_files_with_three_products() -> None:
    scenes = [load_scene(p) for p in SCENES]
    assert len({s.product.type for s in scenes}) >= 3


@pytest.mark.parametrize("path", SCENES, ids=lambda p: p.stem)
def test_scene_renders_deterministically_with_truth(path: Path) -> None:
    a, b = (SceneEmulator(load_scene(path), 192, 160, seed=5) for _ in range(2))
    frames = [a.render(i) for i in range(40)]
    for i, f in enumerate(frames[:5]):
        g = b.render(i)
        assert f.truth == g.truth
        assert (f.pixels is None and g.pixels is None) or np.array_equal(f.pixels, g.pixels)  # type: ignore[arg-type]
    shown = [f for f in frames if f.pixels is not None]
    assert shown and all(f.pixels.shape[:2] == (160, 192) and f.pixels.dtype == np.uint8 for f in shown)  # type: ignore[union-attr]
    assert any(f.truth["label"] == "defect" for f in frames)
    for f in frames:
        if f.truth["label"] == "defect":
            x, y, w, h = f.truth["region"]
            assert 0 <= x < 192 and 0 <= y < 160 and w > 0 and h > 0 and f.truth["type"] in DEFECT_KINDS


@pytest.mark.parametrize("product", ["round_part", "metal_surface", "label"])
@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_every_defect_changes_the_pixels_inside_its_region(product: str, kind: str) -> None:
    spec = _scene(product={"type": product}).product
    clean = render_product(spec, 200, 160, np.random.default_rng(3), (0, 0))
    hurt = render_product(spec, 200, 160, np.random.default_rng(3), (0, 0))
    region = inject_defect(hurt, kind, 1.0, np.random.default_rng(4))
    assert region is not None
    x, y, w, h = region
    diff = np.abs(hurt.image - clean.image)
    assert diff[y:y + h, x:x + w].max() > 30
    outside = diff.copy()
    outside[y:y + h, x:x + w] = 0
    assert outside.max() < 1e-3, "a defect must stay inside the region its truth names"


def test_lighting_degrades_by_30_percent_over_ten_minutes() -> None:
    scene = _scene(scenarios=[{"at_s": 0, "over_s": 600, "lighting": 0.7}], defects={"rate": 0.0},
                   camera={"read_noise_e": 0})
    emu = SceneEmulator(scene, 128, 128, seed=1, fps=1.0)
    start, end = emu.render(0).pixels, emu.render(600).pixels
    assert start is not None and end is not None
    ratio = end.astype(float).mean() / start.astype(float).mean()
    assert 0.66 < ratio < 0.74
    assert conditions_at(scene, 300).lighting == pytest.approx(0.85)


def test_camera_bump_shifts_the_view_and_new_defect_type_appears() -> None:
    scene = _scene(product={"position_jitter": 0}, defects={"rate": 1.0, "types": ["dent"]},
                   scenarios=[{"at_s": 10, "shift_px": [20, 0]}, {"at_s": 5, "add_defect": "crack"}])
    emu = SceneEmulator(scene, 160, 160, seed=2, fps=1.0)
    before, after = emu.render(2).pixels, emu.render(12).pixels
    assert before is not None and after is not None
    xs_before = np.nonzero(before.astype(float).mean(axis=0) > 120)[0]
    xs_after = np.nonzero(after.astype(float).mean(axis=0) > 120)[0]
    assert 15 <= xs_after.mean() - xs_before.mean() <= 25
    assert {emu.render(i).truth["type"] for i in range(5)} == {"dent"}
    assert "crack" in {emu.render(i).truth["type"] for i in range(5, 60)}


def test_exposure_gain_and_noise_behave_like_a_sensor() -> None:
    base = {"product": {"type": "metal_surface", "texture": 0}, "defects": {"rate": 0}}
    dim = SceneEmulator(_scene(**base), 96, 96, exposure_us=2500).render(0).pixels
    bright = SceneEmulator(_scene(**base), 96, 96, exposure_us=5000).render(0).pixels
    gained = SceneEmulator(_scene(**base, camera={"gain_db": 6}), 96, 96, exposure_us=2500).render(0).pixels
    assert dim is not None and bright is not None and gained is not None
    assert dim.mean() < 0.6 * bright.mean()
    assert abs(gained.mean() - 2 * dim.mean()) < 0.1 * bright.mean()
    quiet = SceneEmulator(_scene(**base, camera={"read_noise_e": 0, "full_well_e": 1e6}), 96, 96).render(0).pixels
    noisy = SceneEmulator(_scene(**base, camera={"read_noise_e": 200, "full_well_e": 2000}), 96, 96).render(0).pixels
    assert quiet is not None and noisy is not None
    assert noisy[40:56, 40:56].std() > 2 * quiet[40:56, 40:56].std()


def test_bayer_scene_reaches_the_line_as_mono8_and_rgb8() -> None:
    scene = REPO / "cameras" / "scenes" / "metal-surface.yaml"
    for fmt, shape in (("Mono8", (120, 160)), ("RGB8", (120, 160, 3))):
        cam = CameraConfig.model_validate({"width": 160, "height": 120, "pixel_format": fmt,
                                           "source": {"type": "emulator", "scene": str(scene)}})
        g = EmulatorCamera(cam).grab(1.0)
        assert g is not None and g.pixels.shape == shape and g.pixel_format == fmt


def test_dropped_and_incomplete_frames_leave_gaps_like_a_gentl_stream(tmp_path: Path) -> None:
    path = tmp_path / "flaky.yaml"
    path.write_text("camera: {drop_rate: 0.2, incomplete_rate: 0.2}\n")
    cam = CameraConfig.model_validate({"source": {"type": "emulator", "scene": str(path)}})
    camera = EmulatorCamera(cam)
    grabbed = [camera.grab(1.0) for _ in range(100)]
    ids = [g.frame_id for g in grabbed if g is not None]
    gaps = sum(b - a - 1 for a, b in itertools.pairwise(ids))
    skipped = sum(g.skipped_incomplete for g in grabbed if g is not None)
    assert skipped > 5 and gaps > skipped, "dropped frames leave id gaps beyond the counted incomplete ones"


def test_the_default_emulator_is_still_the_reference_renderer() -> None:
    camera = EmulatorCamera(CameraConfig.model_validate({"source": {"type": "emulator", "seed": 7}}))
    ref = PartEmulator(256, 256, seed=7, defect_rate=0.2)
    for i in range(5):
        g = camera.grab(1.0)
        assert g is not None
        np.testing.assert_array_equal(g.pixels, ref.render(i).pixels)
        assert g.truth == ref.render(i).truth


def test_a_bad_scene_names_the_file_and_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("defects: {rate: 2, types: [rust]}\ncamera: {vignetting: 0.3, zoom: 2}\n")
    with pytest.raises(SceneError) as err:
        load_scene(bad)
    text = str(err.value)
    assert "bad.yaml" in text and "defects.rate" in text and "rust" in text and "camera.zoom" in text


def test_a_new_flaw_on_its_own_share_leaves_every_other_part_as_it_was() -> None:
    base = Scene.model_validate({"defects": {"rate": 0.2, "types": ["dent"]}})
    flawed = base.model_copy(update={"scenarios": [Scenario(at_s=0, add_defect="crack", add_defect_rate=0.5)]})
    a, b = SceneEmulator(base, 128, 128, seed=3), SceneEmulator(flawed, 128, 128, seed=3)
    kinds = []
    for seq in range(200):
        fa, fb = a.render(seq), b.render(seq)
        if fa.truth["label"] == "defect" or fb.truth["type"] != "crack":
            assert fa.truth == fb.truth and np.array_equal(fa.pixels, fb.pixels), seq  # the same part
        kinds.append(fb.truth["type"])
    goods = 200 - kinds.count("dent")
    assert 0.35 < kinds.count("crack") / goods < 0.65, "about half the otherwise good parts get the new flaw"
