"""A sharded on-disk cache of decoded images, keyed by file contents and decode settings.

Every image is decoded once by `petal.data.decode.decode_image` and stored as uint8 rows of NumPy shard
files. A later run over the same files (even renamed or moved) reads the shards through memory
maps and decodes nothing; a changed file gets a new key and is decoded again. Memory use stays at
one shard being written plus what the OS pages in, whatever the size of the folder.

Layout: <cache root>/<size>-<settings key>/shard-<id>.npy (N x H x W x 3 uint8) and shard-<id>.json
(see ShardStore). `petal.training.embeddings` keeps a backbone's embeddings in the same kind of store.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from petal import atomic
from petal.data.decode import DEFAULT_MAX_PIXELS, RESIZE_METHOD, decode_image, open_regular
from petal.data.index import ImageFolder
from petal.errors import DiskFullError, ImageError, counted

log = logging.getLogger(__name__)

CACHE_FORMAT = 2  # 2: large non-JPEG images are shrunk by an integer factor while decoding (petal.data.decode)
SHARD_SIZE = 512  # images per shard: 512 x 180 x 180 x 3 bytes = 50 MB


def default_cache_root() -> Path:
    return Path(os.environ.get("PETAL_CACHE_DIR") or Path.home() / ".cache" / "petal")


@dataclass
class CachedRows:
    """Rows of one `ImageFolder` in its order (decoded images, or their embeddings: `petal.training.embeddings`),
    read from the shard files a batch at a time."""

    folder: ImageFolder
    row_shape: tuple[int, ...]  # (height, width, 3) for images, (features,) for embeddings
    dtype: str
    shard_paths: list[Path]
    shard_of: np.ndarray  # int32 per usable image
    row_of: np.ndarray  # int32 per usable image
    usable: np.ndarray  # indices into `folder` of the images that decoded
    keys: list[str]  # content key (sha256 of the file) per usable image
    failures: dict[str, str]  # relative path -> reason, for images left out
    computed: int  # how many rows this call computed (0 when everything came from the cache)
    _offsets: dict[int, int] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.usable)

    @property
    def image_size(self) -> tuple[int, int]:
        return self.row_shape[:2]

    @property
    def labels(self) -> np.ndarray:
        return self.folder.labels[self.usable]

    @property
    def paths(self) -> list[str]:
        return [self.folder.paths[i] for i in self.usable]

    def gather(self, positions: np.ndarray) -> np.ndarray:
        """Rows at `positions` (0..len-1) as one batch, read from the shard files.

        Plain reads, not a memory map: the rows pass through the page cache, which the kernel reclaims
        and which is not the process's memory, so the resident size stays one batch however many rows
        an epoch reads. Each call opens its own files, so tf.data may call it from several threads."""
        positions = np.asarray(positions)
        batch = np.empty((len(positions), *self.row_shape), dtype=self.dtype)
        row_bytes = batch[0].nbytes if len(batch) else 0
        shards = self.shard_of[positions]
        for shard in np.unique(shards):
            with open(self.shard_paths[shard], "rb") as f:
                offset = self._data_offset(int(shard), f)
                for out in np.flatnonzero(shards == shard):
                    f.seek(offset + int(self.row_of[positions[out]]) * row_bytes)
                    if f.readinto(memoryview(batch[out]).cast("B")) != row_bytes:
                        raise OSError(f"{self.shard_paths[shard]}: shard file is shorter than its index says")
        return batch

    def _data_offset(self, shard: int, f) -> int:
        """Where the rows of a shard's .npy file start (after NumPy's header), read once per shard."""
        if shard not in self._offsets:
            _read_npy_header(f)  # leaves the file at the first row
            self._offsets[shard] = f.tell()
        return self._offsets[shard]


def _read_npy_header(f) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of the .npy file open in `f`, which is left at its first row."""
    major, _ = np.lib.format.read_magic(f)
    read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    shape, _, dtype = read_header(f)
    return shape, dtype


def _whole_array(path: Path, rows: int) -> bool:
    """Whether the .npy file at `path` holds `rows` rows in full (a disk fault or an edit can cut it short)."""
    try:
        with open(path, "rb") as f:
            shape, dtype = _read_npy_header(f)
            expected = f.tell() + int(np.prod(shape)) * dtype.itemsize
        return bool(shape) and shape[0] == rows and path.stat().st_size == expected
    except (OSError, ValueError):
        return False


class ShardStore:
    """Content-keyed rows in <dir>/shard-<id>.npy with their index shard-<id>.json
    ({"keys": [...], "failed": {key: reason}}), the JSON written last, so a shard whose JSON exists
    is complete. Shard ids are random: two processes filling one store never write the same file."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.index: dict[str, tuple[int, int]] = {}  # key -> (shard, row)
        self.failed: dict[str, str] = {}  # key -> why it has no row
        self.shard_names: list[str] = []
        self._read_index()

    def _read_index(self) -> None:
        if not self.dir.is_dir():
            return
        atomic.remove_partials(self.dir, recursive=False)
        self._remove_orphans()
        for meta_path in sorted(self.dir.glob("shard-*.json")):
            try:
                meta = json.loads(meta_path.read_text())
                keys, failed = list(meta["keys"]), dict(meta.get("failed", {}))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):  # damaged, or JSON of another shape
                log.warning("ignoring unreadable cache index %s", meta_path)
                continue
            if keys and not meta_path.with_suffix(".npy").exists():
                continue
            if keys and not _whole_array(meta_path.with_suffix(".npy"), len(keys)):
                log.warning("%s: damaged (shorter, or other rows than its index says): removed; its images are decoded again",
                            meta_path.with_suffix(".npy"))
                meta_path.unlink(missing_ok=True)  # the index first: an array without one is never read
                meta_path.with_suffix(".npy").unlink(missing_ok=True)
                continue
            shard = len(self.shard_names)
            self.shard_names.append(meta_path.stem)
            for row, key in enumerate(keys):
                self.index.setdefault(key, (shard, row))
            self.failed.update(failed)

    def _remove_orphans(self) -> None:
        """Shard arrays whose index was never written because their writer was killed between the two
        renames (a shard's name carries its writer, petal.atomic.owner_tag)."""
        for array in self.dir.glob("shard-*.npy"):
            if not array.with_suffix(".json").exists() and atomic.writer_is_gone(array.stem.removeprefix("shard-")):
                array.unlink(missing_ok=True)

    def write_shard(self, keys: list[str], rows: list[np.ndarray], failed: dict[str, str]) -> None:
        name = f"shard-{atomic.owner_tag()}{uuid.uuid4().hex[:12]}"
        if rows:
            with atomic.atomic_path(self.dir / f"{name}.npy") as tmp:
                np.save(tmp, np.stack(rows))
        atomic.write_json(self.dir / f"{name}.json", {"keys": list(keys), "failed": dict(failed)})
        for row, key in enumerate(keys):
            self.index[key] = (len(self.shard_names), row)
        self.failed.update(failed)
        self.shard_names.append(name)

    def rows(self, folder: ImageFolder, keys: list[str | None], row_shape, dtype: str, computed: int) -> CachedRows:
        """`folder`'s rows, given the content key of each of its files (None: the file cannot be read)."""
        usable, usable_keys, failures = [], [], {}
        for i, key in enumerate(keys):
            if key is None:
                failures[folder.paths[i]] = "cannot read file (missing, unreadable, or not a regular file)"
            elif key in self.index:
                usable.append(i)
                usable_keys.append(key)
            else:
                failures[folder.paths[i]] = self.failed[key]
        return CachedRows(
            folder=folder,
            row_shape=tuple(row_shape),
            dtype=dtype,
            shard_paths=[self.dir / f"{name}.npy" for name in self.shard_names],
            shard_of=np.asarray([self.index[k][0] for k in usable_keys], dtype=np.int32),
            row_of=np.asarray([self.index[k][1] for k in usable_keys], dtype=np.int32),
            usable=np.asarray(usable, dtype=np.int64),
            keys=usable_keys,
            failures=failures,
            computed=computed,
        )


    def rows_like(self, images: CachedRows, row_shape, dtype: str, computed: int) -> CachedRows:
        """Rows of this store for the same images as `images` (all of whose keys it holds)."""
        return dataclasses.replace(
            images,
            row_shape=tuple(row_shape),
            dtype=dtype,
            shard_paths=[self.dir / f"{name}.npy" for name in self.shard_names],
            shard_of=np.asarray([self.index[k][0] for k in images.keys], dtype=np.int32),
            row_of=np.asarray([self.index[k][1] for k in images.keys], dtype=np.int32),
            computed=computed,
            _offsets={},
        )


class DecodeCache:
    """Content-addressed store of decoded images for one image size and decode method."""

    def __init__(self, root: str | os.PathLike, image_size: tuple[int, int], max_pixels: int = DEFAULT_MAX_PIXELS):
        self.image_size = tuple(image_size)
        self.max_pixels = max_pixels
        self.dir = Path(root) / f"{self.image_size[0]}x{self.image_size[1]}-{settings_key(self.settings)}"

    @property
    def settings(self) -> dict:
        return {"format": CACHE_FORMAT, "size": list(self.image_size), "resize": RESIZE_METHOD, "max_pixels": self.max_pixels}

    def load(
        self, folder: ImageFolder, *, workers: int | None = None, progress: Callable[[Iterable], Iterable] | None = None
    ) -> CachedRows:
        """Decode whatever of `folder` is not cached yet, then serve all of it from the shards."""
        workers = workers or os.cpu_count() or 1
        absolute = [folder.absolute(p) for p in folder.paths]
        with ThreadPoolExecutor(workers) as pool:
            keys = list(pool.map(content_key, absolute, chunksize=64))
        store = ShardStore(self.dir)
        missing = sorted({k for k in keys if k and k not in store.index and k not in store.failed})
        path_of = {k: p for k, p in zip(keys, absolute)}
        if missing:
            self._check_space(len(missing))
            log.info("decoding %s into %s", counted(len(missing), "image"), self.dir)
            self._decode_into(store, [path_of[k] for k in missing], missing, workers, progress)
        log.info(
            "decoded %s, %d read from the decode cache %s", counted(len(missing), "image"), len(keys) - len(missing), self.dir
        )
        return store.rows(folder, keys, (*self.image_size, 3), "uint8", computed=len(missing))

    def _check_space(self, images: int) -> None:
        """Refuse before writing a byte when the disk cannot hold the decoded images."""
        existing = next(p for p in (self.dir, *self.dir.parents) if p.exists())
        needed, free = images * self.image_size[0] * self.image_size[1] * 3, shutil.disk_usage(existing).free
        if needed > free:
            raise DiskFullError(f"{self.dir}: the decode cache needs {needed / 1e6:,.0f} MB for {images:,} images and "
                                f"{free / 1e6:,.0f} MB are free; free space or pass --cache-dir, then run the command again "
                                "(petal train: with --resume)")

    def _decode_into(self, store: ShardStore, paths: list[str], keys: list[str], workers: int, progress) -> None:
        pending_keys: list[str] = []
        pending_images: list[np.ndarray] = []
        pending_failed: dict[str, str] = {}
        with ThreadPoolExecutor(workers) as pool:
            results = pool.map(self._decode, paths, chunksize=8)
            if progress is not None:
                results = progress(results, total=len(paths))
            for key, (image, error) in zip(keys, results):
                if image is None:
                    pending_failed[key] = error
                else:
                    pending_keys.append(key)
                    pending_images.append(image)
                if len(pending_keys) >= SHARD_SIZE:
                    store.write_shard(pending_keys, pending_images, pending_failed)
                    pending_keys, pending_images, pending_failed = [], [], {}
        if pending_keys or pending_failed:
            store.write_shard(pending_keys, pending_images, pending_failed)

    def _decode(self, path: str) -> tuple[np.ndarray | None, str | None]:
        try:
            return decode_image(path, self.image_size, max_pixels=self.max_pixels), None
        except ImageError as exc:
            return None, exc.reason


def settings_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def content_key(path: str) -> str | None:
    """sha256 of the file's bytes: renaming a file keeps its cache entry, editing it does not."""
    try:
        with open_regular(path) as f:  # a FIFO or a device is never read: it would hang or never end
            return hashlib.file_digest(f, "sha256").hexdigest()
    except (OSError, ImageError):
        return None
