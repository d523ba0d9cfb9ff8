"""The data registry: snapshots of real image folders and manifests, their ids, the registry's commands, and
the integrity checks (a truncated PNG, conflicting labels, a class too small, near-duplicates, outliers)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from linewatch.data.check import Recipe, check, holdout_leaks
from linewatch.data.items import REVIEW_COLUMNS, DataError, read_sources
from linewatch.data.registry import DataRegistry, diff
from linewatch.emulator.parts import PartEmulator
from linewatch.reports.review_export import MANIFEST_COLUMNS
from linewatch.training.dataset import load_dataset, stratified_split
from tests.conftest import emulated_parts

SIZE = 64


def _parts(root: Path, n: int = 20, seed: int = 0) -> Path:
    """A folder of class subfolders (good/, defect/) with `n` emulated parts, at least 3 of each class."""
    return emulated_parts(root, n, seed, SIZE)


def _snapshot(reg: DataRegistry, *srcs: Path, name: str = "s", parent: str | None = None) -> str:
    entries, sources = read_sources(list(srcs))
    return reg.snapshot(entries, sources, name, parent)[0].id


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "linewatch", "data", *map(str, args)], capture_output=True,
                          text=True, timeout=120)


def test_a_folder_snapshot_is_content_addressed_read_only_and_rebuilt_byte_identical(tmp_path: Path) -> None:
    ds = _parts(tmp_path / "ds")
    reg = DataRegistry(tmp_path / "reg")
    sid = _snapshot(reg, ds, name="first")
    manifest = reg.snapshots_dir / sid / "manifest.json"
    assert len(sid) == 64 and manifest.is_file()
    assert not manifest.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    again, new = reg.snapshot(*read_sources([ds]), "second")
    assert (again.id, again.name, new) == (sid, "first", False)  # identical inputs: the existing snapshot
    other = DataRegistry(tmp_path / "reg2")  # rebuilt elsewhere, at another time: the same bytes, the same id
    assert _snapshot(other, ds) == sid
    assert (other.snapshots_dir / sid / "manifest.json").read_bytes() == manifest.read_bytes()
    items = json.loads(manifest.read_bytes())["items"]
    assert {i["path"] for i in items} == {p.relative_to(ds).as_posix() for p in ds.rglob("*.png")}
    src = ds / items[0]["path"]
    obj = reg.object_path(items[0]["sha256"])
    assert obj.stat().st_ino == src.stat().st_ino  # same filesystem: a hard link, no second copy
    record = json.loads((reg.snapshots_dir / sid / "record.json").read_text())
    assert record["name"] == "first" and record["sources"][0]["kind"] == "folder" and record["items"] == 20


def test_a_manifest_and_a_review_export_keep_segments_and_review_provenance(tmp_path: Path) -> None:
    assert set(REVIEW_COLUMNS) <= set(MANIFEST_COLUMNS)  # the review export's columns, as items.py knows them
    ds = _parts(tmp_path / "rev")
    rows = [{"path": p.relative_to(ds).as_posix(), "label": p.parent.name, "decision":
             "PASS" if p.parent.name == "good" else "FAIL", "inspection_id": n, "camera": f"cam{n % 2}",
             "reviewer": "ann", "reviewed_at": "2026-01-02T03:04:05", "note": ""}
            for n, p in enumerate(sorted(ds.rglob("*.png")))]
    with (ds / "manifest.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    entries, sources = read_sources([ds / "manifest.csv"])
    assert sources[0].kind == "review-export" and sources[0].name == "rev"
    e = next(e for e in entries if e.path == rows[0]["path"])
    assert e.segments == {"camera": "cam0"}
    assert e.review == {"decision": rows[0]["decision"], "inspection_id": "0", "reviewer": "ann",
                        "reviewed_at": "2026-01-02T03:04:05"}
    reg = DataRegistry(tmp_path / "reg")
    sid = _snapshot(reg, ds)
    assert _snapshot(reg, ds / "manifest.csv") == sid  # the folder holding the manifest is the same dataset
    items = json.loads((reg.snapshots_dir / sid / "manifest.json").read_bytes())["items"]
    assert all("review" in i and "camera" in i["segments"] for i in items)


def test_a_union_stores_each_image_once_and_keeps_sources_apart(tmp_path: Path) -> None:
    a = _parts(tmp_path / "a" / "ds", n=12, seed=1)
    b = _parts(tmp_path / "b" / "ds", n=12, seed=2)
    shutil.copy(a / "good" / "1-004.png", b / "good" / "same-as-a.png")  # one image in both sources
    reg = DataRegistry(tmp_path / "reg")
    sid = _snapshot(reg, a, b, name="union")
    snap = reg.get(sid)
    assert snap.items == 25 and [s["name"] for s in snap.sources] == ["ds", "ds-2"]
    entries = reg.entries(snap)
    assert {e.source for e in entries} == {"ds", "ds-2"}
    objects = [p for p in reg.objects.rglob("*") if p.is_file()]
    assert len(objects) == len({e.sha256 for e in entries}) == 24


def test_emulate_output_is_a_source(tmp_path: Path) -> None:
    out = tmp_path / "emu"
    out.mkdir()
    emu = PartEmulator(SIZE, SIZE, seed=5, defect_rate=0.5)
    with (out / "manifest.jsonl").open("w") as f:  # as `linewatch emulate` writes it
        for i in range(8):
            r = emu.render(i)
            cv2.imwrite(str(out / f"{i:06d}.png"), r.pixels)
            f.write(json.dumps({"file": f"{i:06d}.png", "frame_id": i, "truth": r.truth}) + "\n")
    entries, sources = read_sources([out])
    assert sources[0].kind == "emulate" and len(entries) == 8
    assert {e.label for e in entries} <= {"good", "defect"}
    assert sorted(int(e.segments["frame_id"]) for e in entries) == list(range(8))


def test_list_show_diff_and_an_export_that_snapshots_back_to_the_same_id(tmp_path: Path) -> None:
    a = _parts(tmp_path / "v1")
    b = tmp_path / "v2"
    shutil.copytree(a, b)
    good = sorted((b / "good").iterdir())
    good[0].rename(b / "defect" / good[0].name)  # relabelled
    good[1].unlink()  # removed
    black = np.zeros((SIZE, SIZE), np.uint8)
    cv2.rectangle(black, (10, 10), (50, 50), 200, -1)
    cv2.imwrite(str(b / "good" / "new.png"), black)  # added
    reg = tmp_path / "reg"
    first = _cli("snapshot", a, "--name", "v1", "--registry", reg)
    assert first.returncode == 0, first.stderr
    id_a = first.stdout.strip().splitlines()[-1]
    second = _cli("snapshot", b, "--name", "v2", "--parent", id_a[:8], "--registry", reg)
    assert second.returncode == 0, second.stderr
    id_b = second.stdout.strip().splitlines()[-1]
    assert id_a != id_b and len(id_b) == 64

    listing = _cli("list", "--registry", reg).stdout
    assert id_a[:12] in listing and "v2" in listing
    assert any(line.startswith(id_b[:12]) and id_a[:12] in line for line in listing.splitlines())
    shown = _cli("show", id_b[:10], "--registry", reg).stdout
    assert f"parent   {id_a}" in shown and "class: defect" in shown and "v2: 20 item(s), folder" in shown
    d = _cli("diff", id_a[:8], id_b[:8], "--registry", reg).stdout
    assert "1 added, 1 removed, 1 relabelled" in d
    assert f"good -> defect  v2/defect/{good[0].name}" in d and "good/new.png" in d

    out = tmp_path / "export"
    exp = _cli("export", id_b[:8], "--out", out, "--registry", reg)
    assert exp.returncode == 0, exp.stderr
    assert load_dataset(out).labels == ["good", "defect"]  # the trainer reads the export as it is
    assert {p.relative_to(out).parts[0] for p in out.rglob("*.png")} == {"good", "defect"}  # class subfolders
    back = _cli("snapshot", out, "--name", "again", "--registry", reg)
    assert back.stdout.strip().splitlines()[-1] == id_b and "identical to snapshot 'v2'" in back.stdout
    registry = DataRegistry(reg)
    changes = diff(registry.entries(registry.get(id_a)), registry.entries(registry.get(id_b)))
    assert (len(changes.added), len(changes.removed), len(changes.relabelled)) == (1, 1, 1)


def test_ids_are_unique_prefixes_of_eight_hex_characters_or_more(tmp_path: Path) -> None:
    reg = DataRegistry(tmp_path / "reg")
    for sid in ("deadbeef" + "0" * 56, "deadbeef" + "1" * 56):
        (reg.snapshots_dir / sid).mkdir(parents=True)
        (reg.snapshots_dir / sid / "record.json").write_text(json.dumps(
            {"id": sid, "name": sid[8:10], "created": "2026-01-01T00:00:00Z", "items": 1}))
    assert reg.find("deadbeef1").name == "11"
    with pytest.raises(DataError, match="ambiguous snapshot id deadbeef: matches deadbeef0000"):
        reg.find("deadbeef")
    with pytest.raises(DataError, match="at least 8 hex"):
        reg.find("dead")
    r = _cli("show", "0123456789", "--registry", reg.root)
    assert r.returncode == 2 and "unknown snapshot 0123456789" in r.stderr


def test_a_truncated_png_fails_the_check_and_the_snapshot_naming_it(tmp_path: Path) -> None:
    ds = _parts(tmp_path / "ds")
    bad = sorted((ds / "good").iterdir())[2]
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    r = _cli("check", ds)
    assert r.returncode == 1 and f"ds/good/{bad.name}: unreadable or truncated image" in r.stdout
    reg = tmp_path / "reg"
    s = _cli("snapshot", ds, "--name", "x", "--registry", reg)
    assert s.returncode == 1 and bad.name in s.stdout and "not snapshotted" in s.stderr
    assert not (reg / "snapshots").exists()
    forced = _cli("snapshot", ds, "--name", "x", "--no-check", "--registry", reg)
    assert forced.returncode == 0 and len(forced.stdout.strip().splitlines()[-1]) == 64


def test_conflicting_labels_and_a_class_of_one_are_errors(tmp_path: Path) -> None:
    ds = _parts(tmp_path / "ds")
    twin = sorted((ds / "good").iterdir())[0]
    shutil.copy(twin, ds / "defect" / "twin.png")
    (ds / "scratch").mkdir()
    shutil.copy(sorted((ds / "defect").iterdir())[0], ds / "scratch" / "only.png")  # also a conflict
    result = check(read_sources([ds], sort=False)[0])
    codes = [f.code for f in result.errors]
    assert codes.count("conflict") == 2 and "small_class" in codes
    conflict = next(f for f in result.errors if "twin.png" in f.message)
    assert f"ds/good/{twin.name} (good)" in conflict.message and "ds/defect/twin.png (defect)" in conflict.message
    assert any("class 'scratch' has 1 image(s)" in f.message for f in result.errors)


def test_near_duplicates_and_outliers_are_warnings_with_an_html_report(tmp_path: Path) -> None:
    ds = _parts(tmp_path / "ds", n=24)
    src = sorted((ds / "good").iterdir())[0]
    img = cv2.imread(str(src), cv2.IMREAD_GRAYSCALE)
    assert img is not None
    noisy = np.clip(img.astype(np.int16) + np.random.default_rng(0).integers(-3, 4, img.shape), 0, 255)
    cv2.imwrite(str(ds / "good" / "noisy-copy.png"), noisy.astype(np.uint8))
    cv2.imwrite(str(ds / "good" / "black.png"), np.zeros((SIZE, SIZE), np.uint8))
    report = tmp_path / "check.html"
    r = _cli("check", ds, "--report", report)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 error(s), 2 warning(s)" in r.stdout
    assert f"warning: near-duplicates (perceptual hash within 10 bits): ds/good/{src.name} (good), " \
           "ds/good/noisy-copy.png (good)" in r.stdout
    assert "warning: ds/good/black.png: outlier: brightness 0" in r.stdout
    page = report.read_text()
    assert page.count("data:image/png;base64,") >= 3 and "noisy-copy.png" in page


def test_an_exact_duplicate_across_the_split_is_a_leak(tmp_path: Path) -> None:
    ds = _parts(tmp_path / "ds", n=12)
    for n in range(4):  # copies of one image: some land in validation, some in training
        shutil.copy(ds / "good" / "0-004.png", ds / "good" / f"copy{n}.png")
    entries = read_sources([ds], sort=False)[0]
    result = check(entries, Recipe(val_fraction=0.2, seed=0))
    labels = ["good", "defect"]
    _, hold = stratified_split(np.array([labels.index(e.label) for e in entries]), 0.2, 0)
    twin = next(e.sha256 for e in entries if e.path.endswith("0-004.png"))
    copies = {i for i, e in enumerate(entries) if e.sha256 == twin}
    spans = bool(copies & set(hold.tolist())) and bool(copies - set(hold.tolist()))
    leak = [f for f in result.findings if f.code in ("leak", "duplicate")]
    assert len(leak) == 1 and leak[0].code == ("leak" if spans else "duplicate") and len(leak[0].items) == 5


def test_size_channels_and_a_changed_object_are_errors(tmp_path: Path) -> None:
    ds = _parts(tmp_path / "ds", n=10)
    entries = read_sources([ds])[0]
    result = check(entries, Recipe(frame_size=(32, 32), channels=3))
    assert {f.code for f in result.errors} == {"size", "channels"}
    assert any(f.message.endswith("64x64, the line's frames are 32x32") for f in result.errors)
    reg = DataRegistry(tmp_path / "reg")
    sid = _snapshot(reg, ds)
    victim = sorted((ds / "good").iterdir())[0]
    os.chmod(victim, 0o644)
    with victim.open("r+b") as f:  # edited in place: the registry's hard link sees it too
        f.seek(-1, os.SEEK_END)
        f.write(b"\0")
    r = _cli("check", sid[:12], "--registry", reg.root)
    assert r.returncode == 1 and f"ds/good/{victim.name}:" in r.stdout and "changed since it was hashed" in r.stdout


def test_a_training_image_in_the_holdout_is_a_leak_and_a_near_copy_a_warning(tmp_path: Path) -> None:
    held = read_sources([_parts(tmp_path / "holdout", n=8, seed=5)])[0]
    train = _parts(tmp_path / "train", n=8, seed=6)
    shutil.copy(held[0].file, train / "good" / "same.png")
    img = cv2.imread(str(held[1].file), cv2.IMREAD_UNCHANGED)
    noise = np.random.default_rng(0).integers(-2, 3, img.shape)
    cv2.imwrite(str(train / "good" / "near.png"), np.clip(img.astype(np.int16) + noise, 0, 255).astype(np.uint8))
    findings = holdout_leaks(read_sources([train])[0], held)
    assert [(f.level, f.items[0]) for f in findings] == [("error", "train/good/same.png"),
                                                         ("warning", "train/good/near.png")]
    assert f"the same image as the holdout's {held[0].key} (leak into the holdout)" in findings[0].message
    assert f"a near-duplicate of the holdout's {held[1].key}" in findings[1].message


def test_without_the_data_extra_a_check_refuses_in_one_line_and_the_registry_still_works(tmp_path: Path) -> None:
    """The appliance image has no imagehash or SciPy (the `data` extra): `data check` and `data snapshot` say
    which extra to install, and the registry's other commands (list, show, lineage) run without it."""
    ds = _parts(tmp_path / "ds", n=6)
    reg = tmp_path / "reg"
    _snapshot(DataRegistry(reg), ds, name="before")
    blocked = "import sys; sys.modules['scipy'] = None; from linewatch.cli import main; sys.exit(main())"

    def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", blocked, "data", *map(str, args)], capture_output=True,
                              text=True, timeout=120)

    for refused in (run("check", ds), run("snapshot", ds, "--name", "after", "--registry", reg)):
        assert refused.returncode == 2
        assert refused.stderr == ("error: data checks need the data extra (scipy is not installed): "
                                  "pip install 'linewatch[data]'\n")
    listed = run("list", "--registry", reg)
    assert listed.returncode == 0 and "before" in listed.stdout, listed.stderr
