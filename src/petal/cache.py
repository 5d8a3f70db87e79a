"""A sharded on-disk cache of decoded images, keyed by file contents and decode settings.

Every image is decoded once by `petal.image.decode_image` and stored as uint8 rows of NumPy shard
files. A later run over the same files (even renamed or moved) reads the shards through memory
maps and decodes nothing; a changed file gets a new key and is decoded again. Memory use stays at
one shard being written plus what the OS pages in, whatever the size of the folder.

Layout: <cache root>/<settings key>/shard-<id>.npy (N x H x W x 3 uint8) and shard-<id>.json
({"keys": [...], "failed": {key: reason}}), the JSON written last, so a shard whose JSON exists is
complete. Shard ids are random: two processes filling one cache never write the same file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from petal import atomic
from petal.data import ImageFolder
from petal.errors import ImageError
from petal.image import DEFAULT_MAX_PIXELS, RESIZE_METHOD, decode_image

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
SHARD_SIZE = 512  # images per shard: 512 x 180 x 180 x 3 bytes = 50 MB


def default_cache_root() -> Path:
    return Path(os.environ.get("PETAL_CACHE_DIR") or Path.home() / ".cache" / "petal")


@dataclass
class CachedImages:
    """Decoded images of one `ImageFolder`, in its order, served from memory-mapped shards."""

    folder: ImageFolder
    image_size: tuple[int, int]
    shard_paths: list[Path]
    shard_of: np.ndarray  # int32 per usable image
    row_of: np.ndarray  # int32 per usable image
    usable: np.ndarray  # indices into `folder` of the images that decoded
    failures: dict[str, str]  # relative path -> reason, for images left out
    decoded: int  # how many images this call decoded (0 when everything came from the cache)
    _maps: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.usable)

    @property
    def labels(self) -> np.ndarray:
        return self.folder.labels[self.usable]

    @property
    def paths(self) -> list[str]:
        return [self.folder.paths[i] for i in self.usable]

    def gather(self, positions: np.ndarray) -> np.ndarray:
        """Images at `positions` (0..len-1) as one uint8 batch."""
        positions = np.asarray(positions)
        batch = np.empty((len(positions), *self.image_size, 3), dtype=np.uint8)
        for out, position in enumerate(positions):
            batch[out] = self._shard(self.shard_of[position])[self.row_of[position]]
        return batch

    def _shard(self, shard: int) -> np.ndarray:
        if shard not in self._maps:
            self._maps[shard] = np.load(self.shard_paths[shard], mmap_mode="r")
        return self._maps[shard]


class DecodeCache:
    """Content-addressed store of decoded images for one image size and decode method."""

    def __init__(self, root: str | os.PathLike, image_size: tuple[int, int], max_pixels: int = DEFAULT_MAX_PIXELS):
        self.image_size = tuple(image_size)
        self.max_pixels = max_pixels
        settings = {"format": CACHE_FORMAT, "size": list(self.image_size), "resize": RESIZE_METHOD, "max_pixels": max_pixels}
        key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        self.dir = Path(root) / f"{self.image_size[0]}x{self.image_size[1]}-{key}"

    def load(
        self, folder: ImageFolder, *, workers: int | None = None, progress: Callable[[Iterable], Iterable] | None = None
    ) -> CachedImages:
        """Decode whatever of `folder` is not cached yet, then serve all of it from the shards."""
        workers = workers or os.cpu_count() or 1
        absolute = [folder.absolute(p) for p in folder.paths]
        with ThreadPoolExecutor(workers) as pool:
            keys = list(pool.map(_content_key, absolute, chunksize=64))
        index, failed, shard_names = self._read_index()
        missing = sorted({k for k in keys if k and k not in index and k not in failed})
        path_of = {k: p for k, p in zip(keys, absolute)}
        if missing:
            log.info("decoding %d images into %s", len(missing), self.dir)
            new_index, new_failed, new_shards = self._decode_into_shards([path_of[k] for k in missing], missing, workers, progress)
            index.update({k: (s + len(shard_names), r) for k, (s, r) in new_index.items()})
            failed.update(new_failed)
            shard_names += new_shards
        log.info(
            "decoded %d images, %d read from the decode cache %s", len(missing), len(keys) - len(missing), self.dir
        )
        usable, shard_of, row_of, failures = [], [], [], {}
        for i, key in enumerate(keys):
            if key is None:
                failures[folder.paths[i]] = "cannot read file"
            elif key in index:
                usable.append(i)
                shard_of.append(index[key][0])
                row_of.append(index[key][1])
            else:
                failures[folder.paths[i]] = failed[key]
        return CachedImages(
            folder=folder,
            image_size=self.image_size,
            shard_paths=[self.dir / f"{name}.npy" for name in shard_names],
            shard_of=np.asarray(shard_of, dtype=np.int32),
            row_of=np.asarray(row_of, dtype=np.int32),
            usable=np.asarray(usable, dtype=np.int64),
            failures=failures,
            decoded=len(missing),
        )

    def _read_index(self) -> tuple[dict[str, tuple[int, int]], dict[str, str], list[str]]:
        index: dict[str, tuple[int, int]] = {}
        failed: dict[str, str] = {}
        names: list[str] = []
        if not self.dir.is_dir():
            return index, failed, names
        for meta_path in sorted(self.dir.glob("shard-*.json")):
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, ValueError):
                log.warning("ignoring unreadable cache index %s", meta_path)
                continue
            if meta["keys"] and not meta_path.with_suffix(".npy").exists():
                continue
            shard = len(names)
            names.append(meta_path.stem)
            for row, key in enumerate(meta["keys"]):
                index.setdefault(key, (shard, row))
            failed.update(meta.get("failed", {}))
        return index, failed, names

    def _decode_into_shards(self, paths: list[str], keys: list[str], workers: int, progress):
        index: dict[str, tuple[int, int]] = {}
        failed: dict[str, str] = {}
        shards: list[str] = []
        pending_keys: list[str] = []
        pending_images: list[np.ndarray] = []
        pending_failed: dict[str, str] = {}

        def flush():
            name = f"shard-{uuid.uuid4().hex[:12]}"
            if pending_images:
                with atomic.atomic_path(self.dir / f"{name}.npy") as tmp:
                    np.save(tmp, np.stack(pending_images))
            atomic.write_json(self.dir / f"{name}.json", {"keys": pending_keys, "failed": pending_failed})
            for row, key in enumerate(pending_keys):
                index[key] = (len(shards), row)
            failed.update(pending_failed)
            shards.append(name)
            pending_keys.clear()
            pending_images.clear()
            pending_failed.clear()

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
                    flush()
        if pending_keys or pending_failed:
            flush()
        return index, failed, shards

    def _decode(self, path: str) -> tuple[np.ndarray | None, str | None]:
        try:
            return decode_image(path, self.image_size, max_pixels=self.max_pixels), None
        except ImageError as exc:
            return None, exc.reason


def _content_key(path: str) -> str | None:
    """sha256 of the file's bytes: renaming a file keeps its cache entry, editing it does not."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()
