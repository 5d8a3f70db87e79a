"""Split a folder's images exactly as Keras's loader would, or take the split a folder comes with.

`tf.keras.utils.image_dataset_from_directory(DIR, validation_split=0.2, subset=..., seed=123)` walks
the tree in sorted order, shuffles the whole file list with `np.random.RandomState(seed)` and cuts
the last `int(0.2 * n)` files off for validation. petal repeats those steps without TensorFlow so
that its default split is the tutorial's, file for file, and every result compares with it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Collection

import numpy as np

from petal.data.index import ImageFolder, index_folder
from petal.errors import ConfigError, DataError, counted, printable

log = logging.getLogger(__name__)


SPLIT_METHODS = ("keras", "stratified")


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


LAYOUTS = ("auto", "split", "classes")


def load_split(root: str | os.PathLike, val_split: float = 0.2, seed: int = 123, method: str = "keras", *,
               layout: str = "auto", follow_links: bool = False, exclude: Collection[str] = ()) -> Split:
    """The split of `root`: as given when it holds train/ and val/ (or validation/), else `split_folder`.

    `layout`: "classes" reads every sub-folder as a class (Keras's reading, whatever their names);
    "split" requires train/ and val/ (or validation/), each holding the class sub-folders; "auto" reads
    a tree whose only sub-folders are train/, val/ and test/, each holding only sub-folders, as split
    (and says so), refuses a tree that could be read both ways, and reads anything else as classes.
    `follow_links`: follow symlinked sub-folders inside class folders, as Keras's `follow_links=True`
    (each real folder once); when False, as Keras's default, they are listed in a warning, not read.
    `exclude`: paths relative to `root` left out after the split is made, so every other file keeps its
    side (`petal train --exclude`, petal.data.quarantine.read_exclusion_list); unknown paths are named in a warning.

    Raises:
        ConfigError: unknown `layout`, or `layout="split"` on a tree without train/ and val/.
        DataError: an ambiguous tree under "auto", or a folder that cannot be used (see `index_folder`).
    """
    if layout not in LAYOUTS:
        raise ConfigError(f"layout must be one of {', '.join(LAYOUTS)}. Received: layout={layout!r}")
    parts = find_parts(root) if layout != "classes" else None
    if layout == "split" and parts is None:
        raise ConfigError(f"{root}: --layout split needs train/ and val/ (or validation/) sub-folders")
    if parts is not None and layout == "auto":
        _check_unambiguous(Path(root), parts)
        log.info("%s: read as already split (%s); --layout classes reads %s as classes", root,
                 ", ".join(f"{name}/" for name in parts.values()), " and ".join(parts.values()))
    if parts is None:
        return _excluding(split_folder(index_folder(root, follow_links=follow_links), val_split, seed, method), exclude)
    folders = {part: _rerooted(index_folder(Path(root) / name, follow_links=follow_links), Path(root), name)
               for part, name in parts.items()}
    names = {part: set(folder.class_names) for part, folder in folders.items()}
    for part in folders:
        if names[part] != names["train"]:
            only_train = sorted(names["train"] - names[part])
            only_part = sorted(names[part] - names["train"])
            raise DataError(
                f"{root}: the classes of {parts[part]}/ differ from those of train/: "
                f"only in train/: {only_train or 'none'}; only in {parts[part]}/: {only_part or 'none'}"
            )
    return _excluding(Split(folders["train"], folders["validation"], "given", val_split, seed, folders.get("test")), exclude)


def _excluding(split: Split, exclude: Collection[str]) -> Split:
    """`split` without the files in `exclude`; a class left without training images is refused as in split_folder."""
    if not exclude:
        return split
    exclude = set(exclude)
    keep = lambda folder: folder.subset(i for i, p in enumerate(folder.paths) if p not in exclude)  # noqa: E731
    kept = dataclasses.replace(split, train=keep(split.train), validation=keep(split.validation),
                               test=keep(split.test) if split.test is not None else None)
    listed = {p for part in (split.train, split.validation, split.test) if part is not None for p in part.paths}
    unknown = sorted(exclude - listed)
    if unknown:
        log.warning("%s not images of %s, e.g. %s", counted(len(unknown), "excluded path is", "excluded paths are"),
                    split.train.root, ", ".join(unknown[:3]))
    log.info("left out %s listed for exclusion", counted(len(exclude & listed), "file"))
    untrained = [name for name, n in kept.train.counts().items() if not n]
    if untrained or not len(kept.validation):
        what = f"class(es) {', '.join(untrained)} without training images" if untrained else "no validation images"
        raise DataError(f"{split.train.root}: the exclusion list leaves {what}")
    return kept


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


def _check_unambiguous(root: Path, parts: dict[str, str]) -> None:
    """A tree with train/ and val/ that also holds other sub-folders, or image files directly in a part
    folder, reads one way as split and another as classes (Keras's reading): refuse to guess."""
    others = sorted(e for e in os.listdir(root) if not e.startswith(".") and (root / e).is_dir() and e not in parts.values())
    loose = [name for name in parts.values() if any(f.is_file() for f in (root / name).iterdir())]
    if others or loose:
        why = f"it also holds {', '.join(others)}" if others else f"{', '.join(loose)} also hold(s) files directly"
        raise DataError(f"{root}: train/ and val/ may be split folders or classes named so ({why}): "
                        "pass --layout split or --layout classes (Keras's reading)")


def _rerooted(folder: ImageFolder, root: Path, part: str) -> ImageFolder:
    return ImageFolder(root, folder.class_names, tuple(f"{part}/{p}" for p in folder.paths), folder.labels)


def split_folder(folder: ImageFolder, val_split: float = 0.2, seed: int = 123, method: str = "keras") -> Split:
    """Split into training and validation images.

    "keras" picks the very files `image_dataset_from_directory(..., seed=seed)` picks;
    "stratified" takes the same fraction from every class, for folders with rare classes.
    """
    if not 0.0 < val_split < 1.0:
        raise ConfigError(f"validation split must be between 0 and 1. Received: val_split={val_split}")
    check_seed(seed)
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
    split = Split(folder.subset(train_idx), folder.subset(val_idx), method, val_split, seed)
    untrained = [name for name, n in split.train.counts().items() if not n]
    if untrained:
        raise DataError(
            f"{folder.root}: with this split, class(es) {', '.join(untrained)} have no training images (all in validation); "
            "add images, or use --split stratified or another --seed"
        )
    unvalidated = [name for name, n in split.validation.counts().items() if not n]
    if unvalidated:
        log.warning("class(es) %s have no validation images: their accuracy is not measured", printable(", ".join(unvalidated)))
    return split


def check_seed(seed: int | None, name: str = "seed") -> None:
    """Seeds are NumPy RandomState seeds: whole numbers in 0..2**32 - 1 (None: not set)."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32):
        raise ConfigError(f"{name} must be a whole number in 0..{2**32 - 1}. Received: {name}={seed!r}")
