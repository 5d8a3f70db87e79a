"""Find the images of a class-per-folder tree, in the order Keras's loader walks it, and write and read
the file lists a run folder keeps (split/*.csv)."""

from __future__ import annotations

import csv
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from petal import atomic
from petal.data.decode import IMAGE_EXTENSIONS
from petal.errors import DataError, counted

log = logging.getLogger(__name__)


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


def resolved(path: str | os.PathLike) -> Path:
    """`path` absolute with its links resolved. Raises DataError on a symlink loop (Path.resolve raises
    RuntimeError before Python 3.13)."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError) as exc:
        raise DataError(f"{path}: cannot be resolved ({exc})") from None


def is_inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether `path` is `folder` or lies under it, links resolved (so `folder/link/..` is where the link points).
    Raises DataError on a symlink loop."""
    path, folder = resolved(path), resolved(folder)
    return path == folder or folder in path.parents


def index_folder(root: str | os.PathLike, extensions: tuple[str, ...] = IMAGE_EXTENSIONS, *,
                 follow_links: bool = False) -> ImageFolder:
    """List the image files under `root`/<class>/ (recursively) in Keras's sorted walk order; symlinked
    sub-folders inside class folders are followed only with `follow_links` (see `load_split`)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder ({EXPECTED_LAYOUT})")
    class_names = sorted(
        entry for entry in os.listdir(root) if not entry.startswith(".") and (root / entry).is_dir()
    )
    paths: list[str] = []
    labels: list[int] = []
    empty: list[str] = []
    unfollowed: list[str] = []
    for label, class_name in enumerate(class_names):
        found = list(_walk_images(root / class_name, class_name, extensions, follow_links, unfollowed))
        if not found:
            empty.append(class_name)
        paths += found
        labels += [label] * len(found)
    if unfollowed:
        log.warning("%s: %d symlinked folder(s) inside class folders not followed, as Keras's default: %s; "
                    "--follow-links reads them", root, len(unfollowed), ", ".join(unfollowed))
    if not paths:
        loose = sum(1 for p in root.iterdir() if p.suffix.lower() in extensions)
        hint = f"; found {counted(loose, 'image file')} directly in it" if loose else ""
        raise DataError(f"{root}: no images found in class sub-folders{hint} ({EXPECTED_LAYOUT})")
    if empty:
        raise DataError(f"{root}: class folder(s) with no images: {', '.join(empty)} ({EXPECTED_LAYOUT})")
    broken = [name for name in class_names if "\n" in name]
    if broken:  # labels.txt holds one class name per line
        raise DataError(f"{root}: class folder names must not contain a line feed; rename {', '.join(map(repr, broken))}")
    if len(class_names) < 2:
        raise DataError(
            f"{root}: found only one class ({class_names[0]}); a classifier needs at least two ({EXPECTED_LAYOUT})"
        )
    return ImageFolder(root, tuple(class_names), tuple(paths), np.asarray(labels, dtype=np.int32))


def write_file_list(target: str | os.PathLike, folder: ImageFolder) -> None:
    """Record which files a run used, with their class names, as CSV (path relative to the data root)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")  # RFC 4180: csv then quotes names holding \r or \n
    writer.writerow(["path", "class"])
    for path, label in zip(folder.paths, folder.labels):
        writer.writerow([path, folder.class_names[label]])
    atomic.write_text(target, buffer.getvalue())


def read_file_list(source: str | os.PathLike, root: str | os.PathLike, class_names: tuple[str, ...]) -> ImageFolder:
    """Read a list written by `write_file_list` back, against the run's class names."""
    index = {name: i for i, name in enumerate(class_names)}
    with open(source, newline="", encoding="utf-8", errors="surrogateescape") as f:  # as atomic.write_text wrote it
        rows = list(csv.DictReader(f))
    unknown = sorted({row["class"] for row in rows} - set(index))
    if unknown:
        raise DataError(f"{source}: classes {unknown} are not among the run's classes {list(class_names)}")
    labels = np.asarray([index[row["class"]] for row in rows], dtype=np.int32)
    return ImageFolder(Path(root), tuple(class_names), tuple(row["path"] for row in rows), labels)


def _walk_images(class_dir: Path, class_name: str, extensions: tuple[str, ...], follow_links: bool, unfollowed: list[str]):
    """Yield 'class/sub/file' paths in the order of Keras's `index_subdirectory` (`os.walk` sorted by
    folder). Following links, each real folder is read once, so a link back up the tree cannot loop.
    Symlinked folders not followed are appended to `unfollowed`, relative to the data root."""
    walked, seen = [], set()
    for dirpath, dirnames, files in os.walk(class_dir, followlinks=follow_links):
        dirnames.sort()  # which of two paths to one real folder is read: the first in sorted order
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames.clear()
            continue
        seen.add(real)
        if not follow_links:
            unfollowed += [os.path.join(class_name, os.path.relpath(os.path.join(dirpath, name), class_dir))
                           for name in dirnames if os.path.islink(os.path.join(dirpath, name))]
        walked.append((dirpath, files))
    for dirpath, files in sorted(walked, key=lambda entry: entry[0]):
        for fname in sorted(files):
            if fname.lower().endswith(extensions):
                yield os.path.join(class_name, os.path.relpath(os.path.join(dirpath, fname), class_dir))
