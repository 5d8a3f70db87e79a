"""`petal data DIR --label-issues`: find the photos that are filed wrong, near copies and outliers, from embeddings.

The method is Confident Learning (Northcutt, Jiang and Chuang, "Confident Learning: Estimating
Uncertainty in Dataset Labels", JAIR 70, 2021), through the cleanlab library:

1. Every usable image of the folder (every side of the split) is embedded by the default pretrained
   backbone (MobileNetV2, ImageNet weights shipped with petal) through the decode cache and embedding
   cache that training uses, with the same keys: a later `petal train` decodes and embeds nothing again,
   and the other way round.
2. Out-of-sample class probabilities come from K-fold cross-validation (scikit-learn's StratifiedKFold,
   seeded): every image is predicted by models that never saw it, as Confident Learning requires. The
   embeddings are power-normalised (signed square root, then unit length: Perronnin, Sanchez and Mensink,
   "Improving the Fisher Kernel for Large-Scale Image Classification", ECCV 2010), and the probabilities are
   the mean of a linear head's (LogisticRegression) and a vote of the NEIGHBOUR_VOTE nearest training images
   (KNeighborsClassifier, weighted by inverse distance).
3. `cleanlab.filter.find_label_issues` (filter_by FILTER_BY) flags, in each class, the images with the lowest
   out-of-sample probability of their given class, as many as Confident Learning estimates are filed wrongly
   there; `cleanlab.rank.get_label_quality_scores` scores them (self-confidence: that probability, 0..1, lower
   is worse). The suggested class is the most probable one.
4. `cleanlab.outlier.OutOfDistribution` scores how atypical each embedding is (mean cosine distance to
   its 10 nearest neighbours); an image beyond Q3 + 1.7 IQR of that distance (cleanlab Datalab's default
   rule) is an outlier.
5. Near copies are pairs of different files whose embeddings lie within NEAR_DUPLICATE_DISTANCE (cosine,
   on the same nearest-neighbour graph), or whose 64-bit difference hashes (the doctor's) differ in at most
   HASH_RADIUS bits with embeddings within HASH_CONFIRM_DISTANCE (re-encoded and resized copies), or whose
   embeddings lie within CROP_CANDIDATE_DISTANCE and one of which matches a crop of the other (`crop_match`,
   at least CROP_MATCH: cropped copies, which move the hash and the embedding as far as another shot would);
   the thresholds and their measured precision and recall are in docs/DATA-DOCTOR.md (benchmarks/label_issues.py).

The findings join the data doctor's (petal.data.doctor) by path, with kinds `label-issue`, `outlier` and
`near-duplicate-*`. Nothing here deletes a file: flagged files can be moved to a quarantine
folder (petal.data.quarantine) with a manifest that `petal data --undo-move MANIFEST` reads to put them
back, and `petal train --exclude` leaves the flagged files out of the split.

cleanlab and scikit-learn (the [train] extra) and Keras are imported only inside the functions that use them.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from petal.data.decode import DEFAULT_MAX_PIXELS
from petal.data.doctor import KINDS, DoctorReport, Finding
from petal.data.index import ImageFolder
from petal.data.split import Split
from petal.errors import ConfigError, DataError, printable

log = logging.getLogger(__name__)

# Chosen by measurement on flower_photos with 3% injected label noise (benchmarks/label_issues.py,
# docs/BENCHMARKS.md): the folds of the cross-validation, the head's inverse regularisation strength, and
# cleanlab's filter; the near-copy threshold from re-encoded, resized and cropped copies.
DEFAULT_FOLDS = 5
HEAD_C = 3.0  # inverse L2 strength of the linear head on power-normalised embeddings
NEIGHBOUR_VOTE = 20  # the vote averaged with the head (with power normalisation and FILTER_BY: recall 0.71 -> 0.77)
HEAD = (f"mean of LogisticRegression(C={HEAD_C}) and a {NEIGHBOUR_VOTE}-nearest-neighbour vote "
        "on power-normalised embeddings")
FILTER_BY = "prune_by_class"  # cleanlab's: the lowest label quality per class, as many as the noise estimate says
NEAR_DUPLICATE_DISTANCE = 0.05  # cosine distance between embeddings (some crops) ...
HASH_RADIUS = 3  # ... or differing bits of the 64-bit difference hashes (every re-encoded and resized copy) ...
HASH_CONFIRM_DISTANCE = 0.35  # ... when their embeddings agree this far: the three hash coincidences measured were >= 0.357
CROP_CANDIDATE_DISTANCE = 0.15  # ... or embeddings this close (every 5% crop measured: <= 0.137) ...
CROP_MATCH = 0.98  # ... and one matches a crop of the other this well (crop_match; every 5% crop: >= 0.987)
NEIGHBOURS = 10  # cleanlab's default k for outliers and near duplicates
OUTLIER_IQR_SCALE = 1 / 0.37037 - 1  # cleanlab Datalab's default for features: Q3 + 1.7 IQR of the mean distance
CONTACT_SHEET_LIMIT = 48


@dataclass
class ScoredFinding(Finding):
    """A doctor finding with numbers: `given`/`suggested` class names, `score` in 0..1 (label quality for
    `label-issue`, cleanlab's outlier score for `outlier`; lower is worse) and `distance` (cosine distance
    between embeddings: to the nearest copy for `near-duplicate-*`, the mean to the nearest neighbours for
    `outlier`) and `hash_bits` (how many of the 64 bits of their difference hashes differ, `near-duplicate-*`)."""

    given: str = ""
    suggested: str = ""
    score: float | None = None
    distance: float | None = None
    hash_bits: int | None = None


@dataclass
class LabelIssues:
    """What `find_issues` found, with the arrays it was found from (row i is `paths[i]`).

    `pred_probs`: float32 (N, classes), out-of-sample; `label_quality`, `outlier_scores`: float64 (N,) in
    0..1, lower is worse; `images`: the decoded images (petal.data.cache.CachedRows, uint8 H x W x 3) the
    contact sheet is drawn from. `seconds`: wall time per stage."""

    findings: list[ScoredFinding]
    class_names: tuple[str, ...]
    paths: list[str]
    labels: np.ndarray
    pred_probs: np.ndarray
    label_quality: np.ndarray
    outlier_scores: np.ndarray
    folds: int
    cross_validated_accuracy: float
    skipped: dict[str, str]
    images: object = field(repr=False, default=None)
    seconds: dict[str, float] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    def of_kind(self, *kinds: str) -> list[ScoredFinding]:
        return [f for f in self.findings if f.kind in kinds]

    def summary(self) -> dict:
        """The run's settings and counts, for `petal data --json`."""
        counts: dict[str, int] = {}
        for finding in self.findings:
            counts[finding.kind] = counts.get(finding.kind, 0) + 1
        return {"method": "Confident Learning (Northcutt et al., JAIR 2021) via cleanlab", **self.settings,
                "folds": self.folds, "images": len(self.paths), "cross_validated_accuracy": round(self.cross_validated_accuracy, 4),
                "counts": counts, "skipped": self.skipped, "seconds": {k: round(v, 2) for k, v in self.seconds.items()}}


def find_issues(split: Split, *, cache_dir: str | os.PathLike | None = None, image_size: tuple[int, int] | None = None,
                max_pixels: int = DEFAULT_MAX_PIXELS, folds: int = DEFAULT_FOLDS, seed: int = 123,
                near_duplicate_distance: float = NEAR_DUPLICATE_DISTANCE, hash_radius: int = HASH_RADIUS, workers: int | None = None,
                progress: Callable | None = None, embedding_progress: Callable | None = None, backbone=None) -> LabelIssues:
    """Label issues, outliers and near copies among every image of `split` (train, validation and test).

    Args:
        split: from `petal.data.split.load_split`; labels are the class folders.
        cache_dir: decode and embedding cache (None: $PETAL_CACHE_DIR or ~/.cache/petal), shared with training.
        image_size: (height, width) in pixels the backbone sees; None: the default model's (224, 224).
        folds: K of the stratified K-fold cross-validation (at most the smallest class's size).
        seed: seeds the folds and the head, so a second run finds the same.
        near_duplicate_distance: cosine distance (0..2) between embeddings under which two files are near copies.
        hash_radius: ... or at most this many of the 64 bits of their difference hashes differ (-1: hashes unused).
        progress, embedding_progress: `progress(iterable, total)` wrappers (a tqdm bar) for decoding
            (per image) and matching crops (per pair), and for embedding (per batch).
        backbone: another Keras model from (H, W, 3) 0..255 float images to (D,) embeddings (tests use a tiny
            one); its input fixes the image size. None: the default pretrained backbone.

    Returns:
        LabelIssues, its findings sorted worst first within each kind.

    Raises:
        DataError: fewer than 2 usable images in some class, or fewer usable images than NEIGHBOURS + 1.
        ConfigError: folds below 2 or a negative distance.
        WeightsError: the backbone's weights cannot be had.
    """
    if folds < 2 or not near_duplicate_distance >= 0:
        raise ConfigError(f"folds must be at least 2 and the near-copy distance at least 0. "
                          f"Received: folds={folds}, near_duplicate_distance={near_duplicate_distance}")
    folder, sides = _whole_folder(split)
    _check_enough(folder, folder.labels, "image files")  # before decoding and embedding them all
    timings: dict[str, float] = {}
    started = time.perf_counter()
    images, embeddings = embed(folder, cache_dir=cache_dir, image_size=image_size, max_pixels=max_pixels, workers=workers,
                               progress=progress, embedding_progress=embedding_progress, backbone=backbone)
    timings["embeddings"] = time.perf_counter() - started
    features = embeddings.gather(np.arange(len(embeddings))).astype(np.float64)
    labels = images.labels.astype(np.int64)
    counts = _check_enough(folder, labels, "usable images")
    folds = int(min(folds, counts.min()))
    started = time.perf_counter()
    pred_probs = out_of_sample_probabilities(features, labels, folds=folds, seed=seed)
    timings["cross_validation"] = time.perf_counter() - started
    started = time.perf_counter()
    issues = _find(folder.class_names, images, labels, pred_probs, features, sides, near_duplicate_distance, hash_radius, progress)
    timings["cleanlab"] = time.perf_counter() - started
    findings, label_quality, outlier_scores = issues
    return LabelIssues(
        findings=findings, class_names=folder.class_names, paths=images.paths, labels=labels, pred_probs=pred_probs.astype(np.float32),
        label_quality=label_quality, outlier_scores=outlier_scores, folds=folds,
        cross_validated_accuracy=float(np.mean(pred_probs.argmax(1) == labels)), skipped=dict(images.failures), images=images,
        seconds=timings, settings={"image_size": list(images.image_size), "head": HEAD,
                                   "filter_by": FILTER_BY, "near_duplicate_distance": near_duplicate_distance,
                                   "hash_radius": hash_radius, "seed": seed},
    )


def _check_enough(folder: ImageFolder, labels: np.ndarray, what: str) -> np.ndarray:
    """Images per class (int64); DataError when some class has fewer than 2 or all fewer than NEIGHBOURS + 1."""
    counts = np.bincount(labels, minlength=len(folder.class_names))
    if counts.min() < 2 or len(labels) <= NEIGHBOURS:
        raise DataError(f"{folder.root}: finding label issues needs at least 2 usable images in every class and "
                        f"{NEIGHBOURS + 1} in all; {what} per class: " + ", ".join(f"{name} {n}" for name, n in zip(folder.class_names, counts)))
    return counts


def _whole_folder(split: Split) -> tuple[ImageFolder, dict[str, str]]:
    """Every side of the split as one folder (label issues are the same wherever a file sits), and each path's side."""
    parts = [("train", split.train), ("validation", split.validation)] + ([("test", split.test)] if split.test else [])
    paths = tuple(p for _, folder in parts for p in folder.paths)
    labels = np.concatenate([folder.labels for _, folder in parts]).astype(np.int32)
    sides = {p: side for side, folder in parts for p in folder.paths}
    return ImageFolder(split.train.root, split.train.class_names, paths, labels), sides


def embed(folder: ImageFolder, *, cache_dir=None, image_size=None, max_pixels: int = DEFAULT_MAX_PIXELS, workers=None,
          progress=None, embedding_progress=None, backbone=None):
    """(decoded images, embeddings) of `folder` as petal.data.cache.CachedRows: uint8 (H, W, 3) and float32 (1280,)
    rows of the default model's frozen backbone (or `backbone`'s), through the very caches (and keys) `petal train` uses."""
    from petal.config import TrainConfig
    from petal.data.cache import default_cache_root
    from petal.registry import DEFAULT_MODEL, create_model
    from petal.training.embeddings import EmbeddingCache
    from petal.training.loop import decode_cache

    if backbone is not None:
        image_size = tuple(backbone.input_shape[1:3])
    config = TrainConfig.for_model(str(folder.root), DEFAULT_MODEL, cache_dir=None if cache_dir is None else str(cache_dir),
                                   max_pixels=max_pixels, image_size=None if image_size is None else tuple(image_size))
    decoder = decode_cache(config)
    images = decoder.load(folder, workers=workers, progress=progress)
    if backbone is None:
        name, backbone = config.model, create_model(config.model, len(folder.class_names), config.image_size, config.weights or "imagenet").features
    else:
        name = f"custom-{backbone.name}"
    cache = EmbeddingCache(config.cache_dir or default_cache_root(), name, backbone, decoder.settings)
    return images, cache.load(images, progress=embedding_progress)


def out_of_sample_probabilities(features: np.ndarray, labels: np.ndarray, *, folds: int = DEFAULT_FOLDS, seed: int = 123,
                                c: float = HEAD_C, neighbours: int = NEIGHBOUR_VOTE) -> np.ndarray:
    """(N, classes) float64 out-of-sample probabilities: for each fold of a seeded StratifiedKFold, the mean of a
    LogisticRegression head's (inverse L2 strength `c`) and a `neighbours`-nearest-neighbour vote's (weighted by
    inverse distance; fewer when a fold trains on fewer images), both fitted on the other folds (scikit-learn's
    `cross_val_predict`), on power-normalised embeddings (`power_normalise`).

    `features`: (N, D) float; `labels`: (N,) int in 0..classes-1, every class present at least `folds` times."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier

    features = power_normalise(features)
    folding = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    smallest_training_fold = len(labels) - max(len(held_out) for _, held_out in folding.split(features, labels))
    heads = (LogisticRegression(C=c, max_iter=3000, random_state=seed),
             KNeighborsClassifier(n_neighbors=min(neighbours, smallest_training_fold), weights="distance"))
    return np.mean([cross_val_predict(head, features, labels, cv=folding, method="predict_proba") for head in heads], axis=0)


def power_normalise(features: np.ndarray) -> np.ndarray:
    """sign(x) * sqrt(|x|), each row then scaled to unit L2 length (Perronnin et al., ECCV 2010): damps the few
    large pooled activations that dominate a raw embedding, so dot products (the head) and distances (the
    vote) weigh every feature more evenly. (N, D) float in, (N, D) float64 out; an all-zero row stays zero."""
    from sklearn.preprocessing import normalize

    return normalize(np.sign(features) * np.sqrt(np.abs(features)))


def _find(class_names, images, labels, pred_probs, features, sides, near_duplicate_distance, hash_radius, progress=None):
    """cleanlab's label issues and outlier scores, and near copies on the same nearest-neighbour graph."""
    from cleanlab.filter import find_label_issues
    from cleanlab.outlier import OutOfDistribution
    from cleanlab.rank import get_label_quality_scores
    from scipy.stats import iqr

    paths = images.paths
    quality = get_label_quality_scores(labels, pred_probs, method="self_confidence")
    flagged = find_label_issues(labels, pred_probs, filter_by=FILTER_BY, return_indices_ranked_by="self_confidence")
    suggested = pred_probs.argmax(1)
    findings = [
        ScoredFinding(paths[i], "label-issue", f"given {class_names[labels[i]]}, suggested {class_names[suggested[i]]} "
                      f"(label quality {quality[i]:.3f})", class_names[labels[i]], class_names[suggested[i]], float(quality[i]))
        for i in flagged
    ]
    ood = OutOfDistribution(params={"k": NEIGHBOURS})
    outlier_scores = ood.fit_score(features=features, verbose=False)
    distances, neighbours = ood.params["knn"].kneighbors()  # each image's nearest others, itself left out; cosine
    mean_distance = distances[:, :NEIGHBOURS].mean(1)
    limit = np.percentile(mean_distance, 75) + OUTLIER_IQR_SCALE * iqr(mean_distance)
    for i in np.argsort(outlier_scores):
        if mean_distance[i] > limit:
            findings.append(ScoredFinding(
                paths[i], "outlier", f"mean cosine distance {mean_distance[i]:.3f} to its {NEIGHBOURS} nearest images "
                f"(outlier score {outlier_scores[i]:.3f}; given {class_names[labels[i]]}"
                + (f", suggested {class_names[suggested[i]]})" if suggested[i] != labels[i] else ")"),
                class_names[labels[i]], class_names[suggested[i]], float(outlier_scores[i]), float(mean_distance[i])))
    findings += near_duplicates(images, labels, class_names, sides, features, distances, neighbours, near_duplicate_distance, hash_radius,
                                progress)
    return findings, quality, outlier_scores


def difference_hashes(images) -> np.ndarray:
    """uint64 (N,): the doctor's 64-bit difference hash (petal.data.doctor) of each decoded image row."""
    from PIL import Image

    from petal.data.doctor import _difference_hash

    hashes = np.zeros(len(images), dtype=np.uint64)
    for start in range(0, len(images), 256):
        batch = images.gather(np.arange(start, min(start + 256, len(images))))
        hashes[start : start + len(batch)] = [_difference_hash(Image.fromarray(row)) for row in batch]
    return hashes


def hash_pairs(hashes: np.ndarray, radius: int, rows: int = 1024) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(i, j, differing bits) of every pair i < j whose 64-bit hashes differ in at most `radius` bits,
    compared a block of `rows` at a time (memory: rows x N bytes)."""
    found_i, found_j, found_bits = [], [], []
    for start in range(0, len(hashes), rows):
        bits = np.bitwise_count(hashes[start : start + rows, None] ^ hashes[None, :])
        i, j = np.nonzero(bits <= radius)
        keep = j > i + start
        found_i.append(i[keep] + start)
        found_j.append(j[keep])
        found_bits.append(bits[i[keep], j[keep]])
    return np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_bits).astype(np.int64)


def crop_match(images, pairs: Sequence[tuple[int, int]], side: int = 32, progress: Callable | None = None) -> np.ndarray:
    """float32 (P,): for each pair (i, j) of rows of `images` (CachedRows: `gather(positions)` gives uint8
    (n, H, W, 3)), how well one image matches the best crop of the other: the Pearson correlation of side x side
    grey thumbnails, the best over crops taking up to 10% off each edge of either image (a 0.05 grid, then 0.025
    around its best); 0 for a flat image.
    1.0: the same pixels; a 5% crop of a photo measured >= 0.987 against it, another photo rarely 0.98.
    Image-registration by search, as in near-duplicate detection's geometric check, on thumbnails only (about 20 ms
    a pair on one core). `progress`: a `progress(iterable, total, desc, unit)` wrapper (a tqdm bar)."""
    import tensorflow as tf

    def thumbnails(rows):  # antialiased first: crop_and_resize samples without it
        grey = tf.reduce_mean(tf.cast(images.gather(np.asarray(rows)), tf.float32), -1, keepdims=True)
        return tf.image.resize(grey, (2 * side, 2 * side), antialias=True)

    def unit(x):
        x = tf.reshape(x, [tf.shape(x)[0], -1])
        x -= tf.reduce_mean(x, 1, keepdims=True)
        return x / (tf.norm(x, axis=1, keepdims=True) + 1e-6)

    def best(cropped, whole, margins):  # the best crop of `cropped` (1 image) against `whole`, and its margins
        boxes = np.array([[top, left, 1 - bottom, 1 - right] for top, left, bottom, right in margins], np.float32)
        crops = tf.image.crop_and_resize(cropped, boxes, tf.zeros(len(boxes), tf.int32), (side, side))
        target = tf.image.crop_and_resize(whole, [[0.0, 0.0, 1.0, 1.0]], [0], (side, side))
        scores = tf.squeeze(unit(crops) @ tf.transpose(unit(target)), 1).numpy()
        return float(scores.max()), margins[int(scores.argmax())]

    coarse = list(itertools.product((0.0, 0.05, 0.1), repeat=4))
    matches = np.zeros(len(pairs), np.float32)
    numbered = enumerate(pairs) if progress is None else progress(enumerate(pairs), total=len(pairs), desc="matching crops", unit="pair")
    for k, (i, j) in numbered:
        a, b = tf.split(thumbnails([i, j]), 2)
        for cropped, whole in ((a, b), (b, a)):
            score, margin = best(cropped, whole, coarse)
            fine = [m for m in itertools.product(*[(v - 0.025, v, v + 0.025) for v in margin]) if min(m) >= 0]
            matches[k] = max(matches[k], score, best(cropped, whole, fine)[0])
    return matches


def near_copy_pairs(images, features: np.ndarray, distances: np.ndarray, neighbours: np.ndarray, threshold: float = NEAR_DUPLICATE_DISTANCE,
                    radius: int = HASH_RADIUS, progress: Callable | None = None) -> list[tuple[int, int, float, int]]:
    """(i, j, cosine distance, differing hash bits) of every pair of rows i < j of `images` (CachedRows, decoded
    uint8) that the rule of the module's point 5 calls near copies. `features`: (N, D) embeddings; `distances`,
    `neighbours`: (N, k) cosine nearest-neighbour graph from sklearn's `kneighbors()`; `threshold`:
    NEAR_DUPLICATE_DISTANCE; `radius`: HASH_RADIUS (-1: hashes unused); `progress`: see crop_match. Byte-identical
    pairs (same content key) are left out: they are the doctor's exact `duplicate-*` findings."""
    hashes = difference_hashes(images)
    rows, cols = np.nonzero(distances < max(threshold, CROP_CANDIDATE_DISTANCE))
    candidates = {tuple(sorted((int(i), int(neighbours[i, j])))) for i, j in zip(rows, cols)}
    flat = (hashes == 0) | (hashes == np.uint64(2**64 - 1))  # flat images all hash alike (as in petal.data.doctor)
    candidates |= {(int(i), int(j)) for i, j, _ in zip(*hash_pairs(hashes, radius)) if not (flat[i] or flat[j])}
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    pairs = [(i, j, float(1 - unit[i] @ unit[j]), int(np.bitwise_count(hashes[i] ^ hashes[j])))
             for i, j in sorted(candidates) if images.keys[i] != images.keys[j]]
    close = [(i, j, d, bits) for i, j, d, bits in pairs
             if d < threshold or (bits <= radius and d < HASH_CONFIRM_DISTANCE and not (flat[i] or flat[j]))]
    linked = {(i, j) for i, j, _, _ in close}
    unsure = [pair for pair in pairs if pair[:2] not in linked and pair[2] < CROP_CANDIDATE_DISTANCE]
    matches = crop_match(images, [(i, j) for i, j, _, _ in unsure], progress=progress) if unsure else []
    return close + [pair for pair, match in zip(unsure, matches) if match >= CROP_MATCH]


def near_duplicates(images, labels: np.ndarray, class_names, sides: dict[str, str], features: np.ndarray,
                    distances: np.ndarray, neighbours: np.ndarray, threshold: float, radius: int, progress=None) -> list[ScoredFinding]:
    """`near-duplicate-*` findings for the groups of files that `near_copy_pairs` links (same arguments;
    `sides`: each path's side of the split)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    paths = images.paths
    pairs = near_copy_pairs(images, features, distances, neighbours, threshold, radius, progress)
    if not pairs:
        return []
    n = len(paths)
    graph = coo_matrix((np.ones(len(pairs)), ([p[0] for p in pairs], [p[1] for p in pairs])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    nearest: dict[int, tuple[float, int, int]] = {}  # each file's nearest linked copy ...
    across: dict[int, tuple[float, int, int]] = {}  # ... and its nearest linked copy in another class
    for i, j, d, bits in pairs:
        for a, b in ((i, j), (j, i)):
            if a not in nearest or d < nearest[a][0]:
                nearest[a] = (d, bits, b)
            if labels[a] != labels[b] and (a not in across or d < across[a][0]):
                across[a] = (d, bits, b)
    cosine = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    groups: dict[int, list[int]] = {}
    for i in sorted(nearest, key=lambda i: paths[i]):
        groups.setdefault(component[i], []).append(i)
    findings = []
    for group in groups.values():
        def finding(i, kind, prefix=""):
            d, bits, j = nearest[i]
            if kind == "near-duplicate-across-classes":  # its partner is in another class, linked directly or through the group
                others = [k for k in group if labels[k] != labels[i]]
                d, bits, j = across.get(i) or min((float(1 - cosine[i] @ cosine[k]), None, k) for k in others)
            hashed = "" if bits is None else f", {bits} of 64 hash bits differ"
            return ScoredFinding(paths[i], kind, f"{prefix}cosine distance {d:.3f}{hashed}, to {paths[j]}",
                                 class_names[labels[i]], class_names[labels[j]], None, d, bits)
        classes = {int(labels[i]) for i in group}
        if len(classes) > 1:
            names = ", ".join(sorted(class_names[c] for c in classes))
            findings += [finding(i, "near-duplicate-across-classes", f"classes {names}; ") for i in group]
        else:
            findings += [finding(i, "near-duplicate-within-class") for i in group[1:]]
        if len({sides[paths[i]] for i in group}) > 1:
            findings += [finding(i, "near-duplicate-across-split") for i in group if sides[paths[i]] != "train"]
    return findings


def merge(report: DoctorReport, issues: LabelIssues) -> DoctorReport:
    """The doctor's report with `issues`' findings added by path. A near copy both found (by equal difference
    hash, petal.data.doctor) and measured (by embedding distance) is listed once, with its distance. Sorted by kind,
    then worst first for `label-issue` and `outlier`, then by path."""
    ours = {(f.path, f.kind) for f in issues.findings}
    findings = [f for f in report.findings if (f.path, f.kind) not in ours] + list(issues.findings)
    order = list(KINDS)

    def key(f: Finding):
        ranked = isinstance(f, ScoredFinding) and f.kind in ("label-issue", "outlier")
        return order.index(f.kind), f.score if ranked else 0.0, f.path

    return dataclasses.replace(report, findings=sorted(findings, key=key))


def save_contact_sheet(issues: LabelIssues, path: str | os.PathLike, *, limit: int = CONTACT_SHEET_LIMIT, columns: int = 6,
                       findings: Iterable[ScoredFinding] | None = None) -> Path | None:
    """A PNG grid of the suspect photos, worst first: each label issue, then each outlier, up to `limit`, titled
    with its given and suggested class and file name. None (nothing written) when there is no suspect."""
    from petal.training.plots import save_image_grid

    chosen = list(findings) if findings is not None else issues.of_kind("label-issue") + issues.of_kind("outlier")
    chosen = chosen[:limit]
    if not chosen:
        return None
    row_of = {p: i for i, p in enumerate(issues.paths)}
    pictures = issues.images.gather(np.array([row_of[f.path] for f in chosen]))
    titles = []
    for rank, f in enumerate(chosen, start=1):
        given, suggested = printable(f.given), printable(f.suggested)
        what = f"{given} -> {suggested}" if f.kind == "label-issue" else f"outlier: {given} ({suggested}?)"
        name = printable(Path(f.path).name)
        titles.append(f"{rank}. {what}\n{name if len(name) <= 30 else name[:27] + '...'}  {f.score:.2f}")
    save_image_grid(pictures, titles, path, columns=columns)
    return Path(path)
