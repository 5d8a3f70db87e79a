"""`petal data DIR`: examine every file of an image folder and name, by path, what is wrong with it.

Each file is opened through `petal.data.decode.load_rgb`, the decoder training and prediction use, so a
file the doctor passes is a file training can read, and one it flags is one training leaves out.
Exact duplicates are found by content hash, near duplicates (resized or re-encoded copies) by a
64-bit difference hash; both are reported within a class, across classes and across the split.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from petal.data.decode import (
    DEFAULT_MAX_PIXELS,
    FORMAT_OF_EXTENSION,
    IMAGE_EXTENSIONS,
    TRANSPOSE_OF_ORIENTATION,
    check_pixel_limit,
    identify,
    load_rgb,
    open_regular,
)
from petal.data.split import Split
from petal.errors import ImageError

MIN_SIDE = 32  # smaller images carry too little to learn from at any usual input size
EXAMINE_SIZE = 64  # the doctor decodes at least this size (hashes and exposure need no more): cheap for big files
DARK_LEVEL = 16  # brightest 1% below this (of 255): nearly black
FLAT_SPREAD = 4  # 98% of pixels within this many levels: nearly one flat value

# What each finding means; "error" files are left out of training, "warning" and "info" are used.
KINDS = {
    "empty": ("error", "zero-byte file"),
    "special-file": ("error", "not a regular file (FIFO, device, socket or folder): never read"),
    "unreadable": ("error", "cannot be read (permissions or I/O error)"),
    "not-an-image": ("error", "not an image (no known image format)"),
    "unsupported-format": ("error", "an image format petal does not read"),
    "corrupt": ("error", "truncated or corrupt image"),
    "too-large": ("error", "over the pixel limit (decompression-bomb guard; raise it with --max-pixels)"),
    "too-small": ("warning", f"smaller than {MIN_SIDE} pixels on a side"),
    "extension-mismatch": ("warning", "content does not match the file extension"),
    "hidden": ("warning", "hidden file (name starts with a dot)"),
    "nearly-black": ("warning", "decodes nearly black: pixel values may use only part of their declared range"),
    "near-constant": ("warning", "decodes to nearly one flat value"),
    "animated": ("info", "animated image: the first frame is used"),
    "rotated": ("info", "EXIF orientation tag: the image is turned upright"),
    "duplicate-within-class": ("info", "exact copy of another image of the same class"),
    "duplicate-across-classes": ("warning", "the same image under two classes: one label is wrong"),
    "duplicate-across-split": ("warning", "exact copy in training and validation (or test): inflates their accuracy"),
    "near-duplicate-within-class": ("info", "near copy (resized, re-encoded, recoloured or cropped) of an image of the same class"),
    "near-duplicate-across-classes": ("warning", "near copy of an image of another class"),
    "near-duplicate-across-split": ("warning", "near copy in training and validation (or test)"),
    # Only with --label-issues (petal.training.label_issues): from a pretrained backbone's embeddings and cleanlab.
    "label-issue": ("warning", "filed under one class, looks like another (Confident Learning): check its label"),
    "outlier": ("warning", "unlike the other images of the folder: maybe not a photo of any class"),
}

@dataclass
class Finding:
    path: str
    kind: str
    detail: str = ""

    @property
    def severity(self) -> str:
        return KINDS[self.kind][0]


@dataclass
class FileFacts:
    path: str
    sha256: str | None = None
    dhash: int | None = None
    mode: str | None = None
    findings: list[Finding] = field(default_factory=list)


@dataclass
class DoctorReport:
    root: str
    files: int
    class_counts: dict[str, int]
    train_files: int
    validation_files: int
    findings: list[Finding]
    conversions: dict[str, int]

    @property
    def unusable(self) -> list[str]:
        return sorted({f.path for f in self.findings if f.severity == "error"})

    @property
    def imbalance(self) -> float:
        counts = [n for n in self.class_counts.values() if n]
        return max(counts) / min(counts) if counts else 0.0

    def to_json(self) -> dict:
        return {
            "root": self.root, "files": self.files, "class_counts": self.class_counts,
            "imbalance_ratio": round(self.imbalance, 3), "train_files": self.train_files,
            "validation_files": self.validation_files, "usable_files": self.files - len(self.unusable),
            "conversions": self.conversions, "findings": [{**asdict(f), "severity": f.severity} for f in self.findings],
        }


def examine(split: Split, *, max_pixels: int = DEFAULT_MAX_PIXELS, workers: int | None = None, progress=None) -> DoctorReport:
    """Examine every file of both sides of `split`, in parallel."""
    check_pixel_limit(max_pixels)
    root = split.train.root
    parts = [("train", split.train), ("validation", split.validation)] + ([("test", split.test)] if split.test else [])
    sides = {path: side for side, folder in parts for path in folder.paths}
    labels = {path: label for _, folder in parts for path, label in zip(folder.paths, folder.labels)}
    paths = sorted(sides)
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        results = pool.map(lambda p: _examine_file(root, p, max_pixels), paths, chunksize=16)
        facts = list(progress(results, total=len(paths)) if progress else results)
    findings = [f for fact in facts for f in fact.findings]
    findings += _duplicates(facts, labels, sides, split.train.class_names)
    conversions = Counter(f"{fact.mode} -> RGB" for fact in facts if fact.mode and fact.mode != "RGB")
    all_labels = np.concatenate([folder.labels for _, folder in parts])
    counts = {name: int((all_labels == i).sum()) for i, name in enumerate(split.train.class_names)}
    order = list(KINDS)
    findings.sort(key=lambda f: (order.index(f.kind), f.path))
    return DoctorReport(str(root), len(paths), counts, len(split.train), len(split.validation), findings, dict(conversions))


def _examine_file(root: Path, relative: str, max_pixels: int) -> FileFacts:
    facts = FileFacts(relative)
    if Path(relative).name.startswith("."):
        facts.findings.append(Finding(relative, "hidden"))
    try:
        _examine_content(root / relative, facts, max_pixels)
    except ImageError as exc:
        facts.findings.append(Finding(relative, exc.kind, exc.reason))
    except Exception as exc:  # whatever a hostile file provokes is a finding naming it, never a traceback
        facts.findings.append(Finding(relative, "corrupt", f"cannot decode image ({type(exc).__name__}: {exc})"))
    return facts


def _examine_content(path: Path, facts: FileFacts, max_pixels: int) -> None:
    """Hash, identify and decode one file through the decoder training uses; raises ImageError."""
    relative = facts.path
    with open_regular(path, relative) as fp:
        digest = hashlib.file_digest(fp, "sha256")
        if not fp.tell():
            facts.findings.append(Finding(relative, "empty"))
            return
        facts.sha256 = digest.hexdigest()
        fp.seek(0)
        probe = identify(fp, relative)
        expected = FORMAT_OF_EXTENSION.get(path.suffix.lower())
        actual = "JPEG" if probe.format == "MPO" else probe.format
        if expected and actual != expected:
            facts.findings.append(Finding(relative, "extension-mismatch", f"{path.suffix} file holds {probe.format} data"))
        if getattr(probe, "n_frames", 1) > 1:
            facts.findings.append(Finding(relative, "animated", f"{probe.n_frames} frames"))
        mode, (width, height) = probe.mode, probe.size
        image = load_rgb(probe, relative, draft_size=EXAMINE_SIZE, max_pixels=max_pixels)
        orientation = probe.getexif().get(0x0112, 1)  # read after decoding: PNG keeps EXIF after the pixels
    if orientation in TRANSPOSE_OF_ORIENTATION:
        facts.findings.append(Finding(relative, "rotated", f"orientation {orientation}"))
    facts.mode = mode
    if min(width, height) < MIN_SIDE:
        facts.findings.append(Finding(relative, "too-small", f"{width}x{height}"))
    facts.findings += _exposure_findings(relative, image)
    facts.dhash = _difference_hash(image)


def _exposure_findings(relative: str, image: Image.Image) -> list[Finding]:
    """Nearly black (what 12-bit values in a 16-bit file look like) or nearly one flat value."""
    low, high = np.percentile(np.asarray(image.convert("L")), [1, 99])
    if high < DARK_LEVEL:
        return [Finding(relative, "nearly-black", f"99% of pixels at or below {high:.0f}/255; if the file holds fewer bits than "
                                                   "its format declares, rescale it to the full range")]
    if high - low < FLAT_SPREAD:
        return [Finding(relative, "near-constant", f"98% of pixels within {low:.0f}..{high:.0f}/255")]
    return []


def _difference_hash(image: Image.Image) -> int:
    """64-bit dHash: survives resizing and re-encoding, differs for different photos."""
    small = np.asarray(image.convert("L").resize((9, 8), Image.Resampling.BILINEAR), dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def _duplicates(facts: list[FileFacts], labels: dict, sides: dict, class_names) -> list[Finding]:
    findings = []
    exact_groups = defaultdict(list)
    for fact in facts:
        if fact.sha256 and fact.dhash is not None:
            exact_groups[fact.sha256].append(fact.path)
    findings += _group_findings(exact_groups.values(), labels, sides, class_names, prefix="duplicate")
    near_groups = defaultdict(list)
    exact_of = {}
    for fact in facts:
        if fact.dhash is not None and fact.dhash not in (0, 2**64 - 1):  # flat images all hash alike
            near_groups[fact.dhash].append(fact.path)
            exact_of[fact.path] = fact.sha256
    # A near group whose members are all byte-identical is already reported as exact.
    near = [g for g in near_groups.values() if len({exact_of[p] for p in g}) > 1]
    findings += _group_findings(near, labels, sides, class_names, prefix="near-duplicate")
    return findings


def _group_findings(groups, labels, sides, class_names, prefix: str) -> list[Finding]:
    findings = []
    for group in groups:
        if len(group) < 2:
            continue
        group = sorted(group)
        others = lambda p: ", ".join(q for q in group if q != p)  # noqa: E731
        classes = {labels[p] for p in group}
        if len(classes) > 1:
            names = ", ".join(sorted(class_names[c] for c in classes))
            findings += [Finding(p, f"{prefix}-across-classes", f"classes {names}; same as {others(p)}") for p in group]
        else:
            findings += [Finding(p, f"{prefix}-within-class", f"same as {others(p)}") for p in group[1:]]
        if len({sides[p] for p in group}) > 1:
            findings += [Finding(p, f"{prefix}-across-split", f"same as {others(p)}") for p in group if sides[p] != "train"]
    return findings


def unindexed_files(root: str | os.PathLike) -> list[str]:
    """Files inside class folders that are not indexed as images (wrong or no extension)."""
    root = Path(root)
    found = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for dirpath, _, files in os.walk(class_dir):
            for name in files:
                if not name.lower().endswith(IMAGE_EXTENSIONS):
                    found.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(found)
