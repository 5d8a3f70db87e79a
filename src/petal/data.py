"""Find the images of a class-per-folder tree and split them, exactly as Keras's loader would.

`tf.keras.utils.image_dataset_from_directory(DIR, validation_split=0.2, subset=..., seed=123)` walks
the tree in sorted order, shuffles the whole file list with `np.random.RandomState(seed)` and cuts
the last `int(0.2 * n)` files off for validation. petal repeats those steps without TensorFlow so
that its default split is the tutorial's, file for file, and every result compares with it.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from petal import atomic
from petal.errors import ConfigError, DataError
from petal.image import IMAGE_EXTENSIONS

SPLIT_METHODS = ("keras", "stratified")
EXPECTED_LAYOUT = "expected DIR/<class name>/<image files>, one sub-folder per class"


@dataclass(frozen=True)
class ImageFolder:
    """The images of one folder: paths relative to `root`, each with a label indexing `class_names`."""

    root: Path
    class_names: tuple[str, ...]
    paths: tuple[str, ...]
    labels: np.ndarray  # int32, one per path

    def __len__(self) -> int:
        return len(self.paths)

    def counts(self) -> dict[str, int]:
        per_class = np.bincount(self.labels, minlength=len(self.class_names))
        return {name: int(n) for name, n in zip(self.class_names, per_class)}

    def subset(self, indices) -> "ImageFolder":
        indices = list(indices)
        return ImageFolder(self.root, self.class_names, tuple(self.paths[i] for i in indices), self.labels[indices])

    def absolute(self, relative_path: str) -> str:
        return os.path.join(self.root, relative_path)


@dataclass(frozen=True)
class Split:
    train: ImageFolder
    validation: ImageFolder
    method: str  # "keras", "stratified", or "given" for a folder that comes split
    val_split: float
    seed: int
    test: ImageFolder | None = None


# Folder names of a data set that comes split: DIR/train/<class>, DIR/val/<class>, optional DIR/test/<class>.
PART_NAMES = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}


def load_split(root: str | os.PathLike, val_split: float = 0.2, seed: int = 123, method: str = "keras") -> Split:
    """The split of `root`: as given when it holds train/ and val/ (or validation/), else `split_folder`."""
    parts = find_parts(root)
    if parts is None:
        return split_folder(index_folder(root), val_split, seed, method)
    folders = {part: _rerooted(index_folder(Path(root) / name), Path(root), name) for part, name in parts.items()}
    names = {part: set(folder.class_names) for part, folder in folders.items()}
    for part in folders:
        if names[part] != names["train"]:
            only_train = sorted(names["train"] - names[part])
            only_part = sorted(names[part] - names["train"])
            raise DataError(
                f"{root}: the classes of {parts[part]}/ differ from those of train/: "
                f"only in train/: {only_train or 'none'}; only in {parts[part]}/: {only_part or 'none'}"
            )
    return Split(folders["train"], folders["validation"], "given", val_split, seed, folders.get("test"))


def find_parts(root: str | os.PathLike) -> dict[str, str] | None:
    """{"train": "train", "validation": "val", ...} when `root` comes split, else None."""
    root = Path(root)
    if not root.is_dir():
        return None
    parts = {}
    for entry in sorted(os.listdir(root)):
        if entry.lower() in PART_NAMES and (root / entry).is_dir():
            parts[PART_NAMES[entry.lower()]] = entry
    return parts if "train" in parts and "validation" in parts else None


def _rerooted(folder: ImageFolder, root: Path, part: str) -> ImageFolder:
    return ImageFolder(root, folder.class_names, tuple(f"{part}/{p}" for p in folder.paths), folder.labels)


def index_folder(root: str | os.PathLike, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> ImageFolder:
    """List the image files under `root`/<class>/ (recursively) in Keras's sorted walk order."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder ({EXPECTED_LAYOUT})")
    class_names = sorted(
        entry for entry in os.listdir(root) if not entry.startswith(".") and (root / entry).is_dir()
    )
    paths: list[str] = []
    labels: list[int] = []
    empty: list[str] = []
    for label, class_name in enumerate(class_names):
        found = list(_walk_images(root / class_name, class_name, extensions))
        if not found:
            empty.append(class_name)
        paths += found
        labels += [label] * len(found)
    if not paths:
        loose = sum(1 for p in root.iterdir() if p.suffix.lower() in extensions)
        hint = f"; found {loose} image files directly in it" if loose else ""
        raise DataError(f"{root}: no images found in class sub-folders{hint} ({EXPECTED_LAYOUT})")
    if empty:
        raise DataError(f"{root}: class folder(s) with no images: {', '.join(empty)} ({EXPECTED_LAYOUT})")
    if len(class_names) < 2:
        raise DataError(
            f"{root}: found only one class ({class_names[0]}); a classifier needs at least two ({EXPECTED_LAYOUT})"
        )
    return ImageFolder(root, tuple(class_names), tuple(paths), np.asarray(labels, dtype=np.int32))


def split_folder(folder: ImageFolder, val_split: float = 0.2, seed: int = 123, method: str = "keras") -> Split:
    """Split into training and validation images.

    "keras" picks the very files `image_dataset_from_directory(..., seed=seed)` picks;
    "stratified" takes the same fraction from every class, for folders with rare classes.
    """
    if not 0.0 < val_split < 1.0:
        raise ConfigError(f"validation split must be between 0 and 1. Received: val_split={val_split}")
    if method not in SPLIT_METHODS:
        raise ConfigError(f"unknown split method; expected one of {', '.join(SPLIT_METHODS)}. Received: split={method!r}")
    n = len(folder)
    if method == "keras":
        order = list(range(n))
        np.random.RandomState(seed).shuffle(order)  # the same draws Keras makes on its list of paths
        num_val = int(val_split * n)
        train_idx, val_idx = order[: n - num_val], order[n - num_val :]
    else:
        rng = np.random.RandomState(seed)
        train_idx, val_idx = [], []
        for label in range(len(folder.class_names)):
            members = np.flatnonzero(folder.labels == label)
            rng.shuffle(members)
            num_val = int(round(val_split * len(members)))
            val_idx += members[:num_val].tolist()
            train_idx += members[num_val:].tolist()
        train_idx = rng.permutation(train_idx).tolist()
        val_idx = rng.permutation(val_idx).tolist()
    if not val_idx or not train_idx:
        raise ConfigError(
            f"{folder.root}: a validation split of {val_split} leaves {len(train_idx)} training and "
            f"{len(val_idx)} validation images out of {n}; use more images or another --val-split"
        )
    return Split(folder.subset(train_idx), folder.subset(val_idx), method, val_split, seed)


def write_file_list(target: str | os.PathLike, folder: ImageFolder) -> None:
    """Record which files a run used, with their class names, as CSV (path relative to the data root)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "class"])
    for path, label in zip(folder.paths, folder.labels):
        writer.writerow([path, folder.class_names[label]])
    atomic.write_text(target, buffer.getvalue())


def read_file_list(source: str | os.PathLike, root: str | os.PathLike, class_names: tuple[str, ...]) -> ImageFolder:
    """Read a list written by `write_file_list` back, against the run's class names."""
    index = {name: i for i, name in enumerate(class_names)}
    with open(source, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    unknown = sorted({row["class"] for row in rows} - set(index))
    if unknown:
        raise DataError(f"{source}: classes {unknown} are not among the run's classes {list(class_names)}")
    labels = np.asarray([index[row["class"]] for row in rows], dtype=np.int32)
    return ImageFolder(Path(root), tuple(class_names), tuple(row["path"] for row in rows), labels)


def _walk_images(class_dir: Path, class_name: str, extensions: tuple[str, ...]):
    """Yield 'class/sub/file' paths in the order of Keras's `index_subdirectory`."""
    for dirpath, _, files in sorted(os.walk(class_dir), key=lambda entry: entry[0]):
        for fname in sorted(files):
            if fname.lower().endswith(extensions):
                yield os.path.join(class_name, os.path.relpath(os.path.join(dirpath, fname), class_dir))
