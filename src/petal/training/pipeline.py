"""tf.data input pipelines over the decode cache: shuffle, batch, augment, prefetch.

Images stay in their shard files, read a batch at a time; only index arrays live in memory, so a folder of a
million photos streams through the same code as flower_photos. The shuffle order of epoch `e` is a
function of (seed, e) alone, so a resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from petal.data.cache import CachedRows
from petal.training.augment import Augment


class EpochOrder:
    """Yields one epoch of index batches per call; `tf.data.Dataset.from_generator` calls it once per epoch."""

    def __init__(self, size: int, batch_size: int, seed: int | None, start_epoch: int = 0, drop_remainder: bool = False):
        self.size = size
        self.batch_size = batch_size
        self.end = size - size % batch_size if drop_remainder else size
        self.seed = seed  # None: keep the files in order (validation)
        self.epoch = start_epoch

    def __call__(self):
        if self.seed is None:
            order = np.arange(self.size)
        else:
            order = np.random.RandomState((self.seed + self.epoch) % 2**32).permutation(self.size)
        self.epoch += 1
        for start in range(0, self.end, self.batch_size):
            yield order[start : start + self.batch_size]


def make_dataset(
    images: CachedRows,
    batch_size: int,
    num_classes: int,
    *,
    shuffle_seed: int | None = None,
    start_epoch: int = 0,
    augment: Augment | None = None,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """Batches of (float32 rows, one-hot float32 labels): images in 0..255, the model's input contract,
    or embeddings for a pretrained backbone's head. `drop_remainder`: only full batches (mirrored
    training, whose replicas cannot split a short last batch)."""
    order = EpochOrder(len(images), batch_size, shuffle_seed, start_epoch, drop_remainder)
    labels = images.labels

    def load(positions):
        return images.gather(positions), labels[positions]

    def to_tensors(positions):
        batch, batch_labels = tf.numpy_function(load, [positions], [tf.as_dtype(images.dtype), tf.int32], stateful=False)
        batch.set_shape([None, *images.row_shape])
        batch_labels.set_shape([None])
        return tf.cast(batch, tf.float32), tf.one_hot(batch_labels, num_classes)

    ds = tf.data.Dataset.from_generator(order, output_signature=tf.TensorSpec([None], tf.int64))
    batches = len(images) // batch_size if drop_remainder else -(-len(images) // batch_size)
    ds = ds.apply(tf.data.experimental.assert_cardinality(batches))  # Keras can show steps
    ds = ds.map(to_tensors, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if augment is not None:
        ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)
