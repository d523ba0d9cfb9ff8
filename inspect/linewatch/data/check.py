"""Integrity checks of a labelled dataset before anything trains on it (docs/data.md lists every finding).

Errors refuse a snapshot: an unreadable or truncated image, a wrong size or channel count for the line's
frames, an image that changed since it was hashed, the same image under two labels, an exact duplicate on
both sides of the trainer's validation split (leak), a class too small to split, labels the trainer cannot
order. Warnings never block: exact duplicates on one side of the split, near-duplicates (perceptual hash),
outliers against the set's own statistics.
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np
from PIL import Image

from linewatch.data.items import DataError, Entry
from linewatch.training.dataset import DatasetError, order_labels, sharpness, stratified_split

#: perceptual hash: 16x16 DCT bits (256). 8x8 (64 bits) puts different emulator parts 2 bits apart; at 16x16
#: they are at least ~18 apart and a lightly noised copy within ~2
HASH_SIZE = 16
NEAR_DISTANCE = 10  # bits of 256: at most this far apart is a near-duplicate
OUTLIER_Z = 5.0  # robust z-score (median / MAD) beyond which an image is an outlier of its set
MIN_FOR_OUTLIERS = 8  # fewer images than this: no statistics to judge against
MIN_CLASS = 2  # the trainer's split needs one image to train on and one to validate
METRICS = ("brightness", "contrast", "sharpness", "size")

Level = Literal["error", "warning"]


@dataclass(frozen=True)
class Finding:
    level: Level
    code: str  # unreadable, changed, size, channels, conflict, leak, duplicate, near_duplicate, small_class, ...
    message: str
    items: tuple[str, ...] = ()  # the items' keys (source/path), first one shown with a thumbnail


@dataclass
class CheckResult:
    entries: list[Entry]
    findings: list[Finding] = field(default_factory=list)
    stats: dict[str, dict[str, float]] = field(default_factory=dict)  # key -> metric -> value

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]


@dataclass(frozen=True)
class Recipe:
    """What the line's frames are (None: not checked), and the trainer's split the leak check reproduces."""

    frame_size: tuple[int, int] | None = None  # (W, H)
    channels: int | None = None
    val_fraction: float = 0.2
    seed: int = 0


def _read(entry: Entry, out: list[Finding]) -> np.ndarray | None:
    """The image as the trainer would see it, or None with an error added (naming the file)."""
    try:
        data = entry.file.read_bytes()
    except OSError as exc:
        out.append(Finding("error", "unreadable", f"{entry.key}: cannot read {entry.file} ({exc.strerror})",
                           (entry.key,)))
        return None
    if hashlib.sha256(data).hexdigest() != entry.sha256:
        out.append(Finding("error", "changed", f"{entry.key}: {entry.file} changed since it was hashed "
                                               f"(expected sha256 {entry.sha256[:12]}…)", (entry.key,)))
    try:  # Pillow decodes to the end and says so when a file is cut short; OpenCV may decode half an image
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        out.append(Finding("error", "unreadable", f"{entry.key}: unreadable or truncated image {entry.file} ({exc})",
                           (entry.key,)))
        return None
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        out.append(Finding("error", "unreadable", f"{entry.key}: OpenCV cannot decode {entry.file}", (entry.key,)))
    return img


def _gray(img: np.ndarray) -> np.ndarray:
    if img.dtype != np.uint8:
        img = cv2.convertScaleAbs(img, alpha=255.0 / max(1.0, float(img.max())))
    if img.ndim == 3:
        img = cv2.cvtColor(img[..., :3], cv2.COLOR_BGR2GRAY) if img.shape[2] >= 3 else img[..., 0]
    return img


def _recipe_findings(entry: Entry, img: np.ndarray, recipe: Recipe) -> list[Finding]:
    out = []
    h, w = img.shape[:2]
    if recipe.frame_size and (w, h) != recipe.frame_size:
        fw, fh = recipe.frame_size
        out.append(Finding("error", "size", f"{entry.key}: {w}x{h}, the line's frames are {fw}x{fh}", (entry.key,)))
    colour = img.ndim == 3 and img.shape[2] >= 3 and not (
        np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2]))
    if recipe.channels == 1 and colour:
        out.append(Finding("error", "channels", f"{entry.key}: a colour image, the line's frames are Mono8 "
                                                "(1 channel)", (entry.key,)))
    if recipe.channels == 3 and img.ndim == 2:
        out.append(Finding("error", "channels", f"{entry.key}: a grayscale image, the line's frames are RGB8 "
                                                "(3 channels)", (entry.key,)))
    return out


def _split_sides(entries: list[Entry], recipe: Recipe, out: list[Finding]) -> list[str] | None:
    """'train' or 'validation' per entry, as the trainer would split them in this order; None if it cannot."""
    counts = Counter(e.label for e in entries)
    for label, n in sorted(counts.items()):
        if n < MIN_CLASS:
            out.append(Finding("error", "small_class", f"class {label!r} has {n} image(s): the split needs at least "
                                                       f"{MIN_CLASS} (one to train on, one to validate)"))
    try:
        labels = order_labels(set(counts), "labels", require_defects=False)
    except DatasetError as exc:
        out.append(Finding("error", "labels", str(exc)))
        return None
    index = {name: i for i, name in enumerate(labels)}
    targets = np.array([index[e.label] for e in entries], np.int64)
    _, hold = stratified_split(targets, recipe.val_fraction, recipe.seed)
    sides = ["train"] * len(entries)
    for i in hold:
        sides[int(i)] = "validation"
    return sides


def _exact_duplicates(entries: list[Entry], sides: list[str] | None, out: list[Finding]) -> None:
    groups: dict[str, list[int]] = {}
    for i, e in enumerate(entries):
        groups.setdefault(e.sha256, []).append(i)
    for idx in groups.values():
        if len(idx) < 2:
            continue
        keys = tuple(entries[i].key for i in idx)
        labels = sorted({entries[i].label for i in idx})
        named = ", ".join(f"{entries[i].key} ({entries[i].label})" for i in idx)
        if len(labels) > 1:
            out.append(Finding("error", "conflict", f"the same image with conflicting labels: {named}", keys))
        elif sides is not None and len({sides[i] for i in idx}) > 1:
            out.append(Finding("error", "leak", f"exact duplicates in training and validation (leak): {named}", keys))
        else:
            out.append(Finding("warning", "duplicate", f"exact duplicates: {named}", keys))


def _near_duplicates(entries: list[Entry], hashes: dict[str, np.ndarray], sides: list[str] | None,
                     out: list[Finding]) -> None:
    """Groups of different images whose perceptual hashes are at most NEAR_DISTANCE bits apart."""
    shas = sorted(hashes)
    if len(shas) < 2:
        return
    bits = np.stack([np.packbits(hashes[s]) for s in shas])  # (n, 32) uint8
    rows, cols = [], []
    for i in range(len(shas) - 1):
        near = np.flatnonzero(np.bitwise_count(bits[i + 1:] ^ bits[i]).sum(axis=1) <= NEAR_DISTANCE)
        rows += [i] * len(near)
        cols += (i + 1 + near).tolist()
    from scipy.sparse import coo_matrix  # the data extra (_require_extra)
    from scipy.sparse.csgraph import connected_components

    pairs = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(shas), len(shas)))
    _, component = connected_components(pairs, directed=False)
    members: dict[int, list[str]] = {}
    for s, c in zip(shas, component, strict=True):
        members.setdefault(int(c), []).append(s)
    by_sha: dict[str, list[int]] = {}
    for i, e in enumerate(entries):
        by_sha.setdefault(e.sha256, []).append(i)
    for group in members.values():
        if len(group) < 2:
            continue
        idx = sorted(i for s in group for i in by_sha[s])
        notes = []
        labels = sorted({entries[i].label for i in idx})
        if len(labels) > 1:
            notes.append(f"labels differ ({', '.join(labels)})")
        if sides is not None and len({sides[i] for i in idx}) > 1:
            notes.append("in training and validation (leak)")
        if len({entries[i].source for i in idx}) > 1:
            notes.append("from different sources")
        named = ", ".join(f"{entries[i].key} ({entries[i].label})" for i in idx)
        out.append(Finding("warning", "near_duplicate", f"near-duplicates (perceptual hash within {NEAR_DISTANCE} "
                                                        f"bits): {named}" + "".join(f"; {n}" for n in notes),
                           tuple(entries[i].key for i in idx)))


def _robust_z(values: np.ndarray) -> np.ndarray:
    med = np.median(values)
    mad = np.median(np.abs(values - med)) / 0.6745
    if mad == 0:  # most images alike: fall back to the mean absolute deviation (sd-equivalent)
        mad = np.mean(np.abs(values - med)) * 1.2533
    return np.zeros_like(values) if mad == 0 else (values - med) / mad


def _outliers(stats: dict[str, dict[str, float]], out: list[Finding]) -> None:
    keys = sorted(stats)
    if len(keys) < MIN_FOR_OUTLIERS:
        return
    flagged: dict[str, list[str]] = {}
    for metric in METRICS:
        values = np.array([stats[k][metric] for k in keys])
        med = float(np.median(values))
        for k, z in zip(keys, _robust_z(values), strict=True):
            if abs(z) > OUTLIER_Z:
                flagged.setdefault(k, []).append(f"{metric} {stats[k][metric]:.4g} (median {med:.4g}, z {z:+.1f})")
    for k, reasons in flagged.items():
        out.append(Finding("warning", "outlier", f"{k}: outlier: {', '.join(reasons)}", (k,)))


def _require_extra() -> None:
    """Refuse in one line when the `data` extra is missing: imagehash and SciPy hash and group near-duplicates.
    The appliance image leaves them out (deploy/README.md): data is checked where models are trained."""
    try:
        import imagehash  # noqa: F401
        import scipy.sparse.csgraph  # noqa: F401
    except ImportError as exc:
        raise DataError(f"data checks need the data extra ({str(exc.name).partition('.')[0]} is not installed): "
                        "pip install 'linewatch[data]'") from None


def _phash(gray: np.ndarray) -> np.ndarray:
    """The perceptual hash of a grey image, HASH_SIZE² bits."""
    import imagehash  # the data extra (_require_extra)

    return imagehash.phash(Image.fromarray(gray), hash_size=HASH_SIZE).hash.flatten()


def _entry_phash(entry: Entry) -> np.ndarray | None:
    img = _read(entry, [])
    return None if img is None else _phash(_gray(img))


def holdout_leaks(training: list[Entry], holdout: list[Entry]) -> list[Finding]:
    """Training images that are also in the holdout the model is judged on: the same bytes (an error: it would be
    judged on what it learnt) or, as near-duplicates within one set, a perceptual hash within NEAR_DISTANCE bits (a
    warning). An unreadable image is the check's own finding, not repeated here."""
    _require_extra()
    held = {e.sha256: e for e in holdout}
    out = [Finding("error", "holdout_leak", f"{e.key}: the same image as the holdout's {held[e.sha256].key} "
                   "(leak into the holdout)", (e.key,)) for e in training if e.sha256 in held]
    held_hashes = [(e, h) for e in held.values() if (h := _entry_phash(e)) is not None]
    if not held_hashes:
        return out
    bits = np.stack([np.packbits(h) for _, h in held_hashes])
    for e in training:
        if e.sha256 in held or (h := _entry_phash(e)) is None:
            continue
        distance = np.bitwise_count(bits ^ np.packbits(h)).sum(axis=1)
        j = int(distance.argmin())
        if distance[j] <= NEAR_DISTANCE:
            out.append(Finding("warning", "holdout_near_duplicate", f"{e.key}: a near-duplicate of the holdout's "
                               f"{held_hashes[j][0].key} (perceptual hash {int(distance[j])} bits apart)",
                               (e.key, held_hashes[j][0].key)))
    return out


def check(entries: list[Entry], recipe: Recipe | None = None) -> CheckResult:
    """Every check on the entries, in the order the trainer would read them (its split depends on it)."""
    _require_extra()
    recipe = recipe or Recipe()
    result = CheckResult(entries)
    out = result.findings
    hashes: dict[str, np.ndarray] = {}
    for e in entries:
        img = _read(e, out)
        if img is None:
            continue
        out.extend(_recipe_findings(e, img, recipe))
        gray = _gray(img)
        result.stats[e.key] = {"brightness": float(gray.mean()), "contrast": float(gray.std()),
                               "sharpness": float(sharpness(gray[None])[0]), "size": float(gray.size),
                               "width": float(gray.shape[1]), "height": float(gray.shape[0])}
        if e.sha256 not in hashes:
            hashes[e.sha256] = _phash(gray)
    sides = _split_sides(entries, recipe, out)
    _exact_duplicates(entries, sides, out)
    _near_duplicates(entries, hashes, sides, out)
    _outliers(result.stats, out)
    return result
