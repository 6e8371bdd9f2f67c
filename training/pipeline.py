"""tf.data input pipelines: shuffled (image, caption) pairs to train on, fixed order to evaluate.

Training yields one example per (image, caption) pair, so each image is seen
`captions_per_image` times per epoch, as VSE++ does. Captions are encoded once, in Python, with
the `Vocabulary`; images are read and decoded inside tf.data with the graph ops of
`training.images`, the same ones the exported encoder uses.

Unreadable images:
- training drops the pairs of an image that cannot be read or decoded (`ignore_errors`, which
  logs a warning per dropped element) and never stops mid-epoch. Pass a `PairCounter` to
  `train_dataset` to learn how many pairs a pass delivered and so how many it skipped;
  `find_unreadable_images` names the files.
- evaluation raises, naming the file, because a silently dropped image would shift every
  later row and corrupt Recall@K.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from training.images import (
    ImageConfig,
    decode_image,
    eval_view,
    read_canonical,
    resize_shorter,
    train_image_transform,
    train_needs_resize,
)
from training.text import PAD, Vocabulary
from vsepp.datasets import SplitData

log = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE


def num_pairs(split: SplitData) -> int:
    """Training examples per epoch: one per (image, caption) pair."""
    return len(split.captions)


def steps_per_epoch(split: SplitData, batch_size: int, drop_remainder: bool = True) -> int:
    """Batches in one training epoch when no image is skipped."""
    n = num_pairs(split)
    return n // batch_size if drop_remainder else math.ceil(n / batch_size)


class PairCounter:
    """Counts the pairs a training pipeline delivered, to report the ones it skipped.

    `train_dataset(..., counter=c)` adds one per pair that made it past image decoding (before
    batching, so pairs in a dropped last partial batch count as delivered). After one complete
    pass `c.skipped` is exact; call `reset()` at the start of each epoch. The count lives in a
    host variable: create the counter outside any `strategy.scope()`.
    """

    def __init__(self, expected: int) -> None:
        self.expected = expected  # pairs in one full pass
        with tf.device("/CPU:0"):
            self._delivered = tf.Variable(0, dtype=tf.int64, trainable=False, name="pairs_seen")

    def reset(self) -> None:
        self._delivered.assign(0)

    @property
    def delivered(self) -> int:
        return int(self._delivered.numpy())

    @property
    def skipped(self) -> int:
        """Pairs of one complete pass that were dropped (exact only once the pass is over)."""
        return self.expected - self.delivered

    def count(self, element: Any) -> Any:
        """tf.data map function: counts one element and passes it through."""
        with tf.control_dependencies([self._delivered.assign_add(1)]):
            return tf.nest.map_structure(tf.identity, element)


def encode_captions(captions: Sequence[str], vocab: Vocabulary) -> tuple[np.ndarray, np.ndarray]:
    """All captions as one flat int32 id array and int64 row splits (caption j is
    values[splits[j]:splits[j+1]], framed by <start> and <end>)."""
    encoded = vocab.encode_batch(captions)
    lengths = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(encoded))
    splits = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum(lengths, out=splits[1:])
    values = np.fromiter((t for e in encoded for t in e), dtype=np.int32, count=int(splits[-1]))
    return values, splits


class _Captions:
    """Encoded captions held as constants, looked up by caption row inside tf.data."""

    def __init__(self, captions: Sequence[str], vocab: Vocabulary) -> None:
        values, splits = encode_captions(captions, vocab)
        self.lengths_np = np.diff(splits).astype(np.int32)
        self.values = tf.constant(values, tf.int32)
        self.splits = tf.constant(splits, tf.int64)
        self.lengths = tf.constant(self.lengths_np, tf.int32)

    def lookup(self, row: tf.Tensor) -> dict[str, tf.Tensor]:
        start, end = self.splits[row], self.splits[row + 1]
        return {"tokens": self.values[start:end], "lengths": tf.cast(end - start, tf.int32)}


def _check_split(split: SplitData, features: np.ndarray | None) -> np.ndarray | None:
    n, c = len(split.image_ids), split.captions_per_image
    if n == 0:
        raise ValueError(f"split {split.name!r} has no images")
    if len(split.image_paths) != n or len(split.captions) != c * n:
        raise ValueError(
            f"split {split.name!r} is inconsistent: {n} image ids, {len(split.image_paths)} "
            f"paths, {len(split.captions)} captions (expected {c} per image)"
        )
    if features is None:
        return None
    feats = np.asarray(features, dtype=np.float32)
    if feats.ndim != 2 or feats.shape[0] != n:
        raise ValueError(
            f"features for split {split.name!r} must be [{n}, F], got shape {feats.shape}"
        )
    return feats


def _paths(split: SplitData) -> tf.Tensor:
    return tf.constant([str(p) for p in split.image_paths], tf.string)


def _prefetch(ds: tf.data.Dataset, prefetch_size: int | None) -> tf.data.Dataset:
    # 0 switches prefetching off; None and AUTOTUNE (-1) let tf.data size the buffer.
    if prefetch_size == 0:
        return ds
    if prefetch_size is not None and prefetch_size < AUTOTUNE:
        raise ValueError(f"prefetch_size must be >= 0 or AUTOTUNE, got {prefetch_size}")
    return ds.prefetch(AUTOTUNE if prefetch_size is None else prefetch_size)


def _padded_batch(
    ds: tf.data.Dataset, batch_size: int, drop_remainder: bool = False
) -> tf.data.Dataset:
    """Batch dict elements; variable-length "tokens" are padded with PAD (0)."""
    return ds.padded_batch(batch_size, padding_values=_padding(ds), drop_remainder=drop_remainder)


def _padding(ds: tf.data.Dataset) -> dict[str, tf.Tensor]:
    # padded_batch wants one scalar per component, of its dtype; only "tokens" ever pads.
    return {k: tf.constant(PAD, spec.dtype) for k, spec in ds.element_spec.items()}


def _length_buckets(lengths: np.ndarray, n_buckets: int = 8) -> list[int]:
    """Bucket boundaries at the quantiles of the caption lengths (distinct, increasing)."""
    qs = np.quantile(lengths, np.linspace(0, 1, n_buckets + 1)[1:-1])
    return sorted({int(q) + 1 for q in qs})


def _bucket_rows(
    ds: tf.data.Dataset, lengths: tf.Tensor, boundaries: list[int], batch_size: int
) -> tf.data.Dataset:
    """Regroup a stream of caption rows so each run of `batch_size` has similar lengths.

    Bucketing happens on row indices, before any image is decoded, so the buckets hold ints
    rather than images; unbatching keeps the order and the final batching regroups the runs.
    """
    ds = ds.bucket_by_sequence_length(
        lambda row: tf.gather(lengths, row),
        bucket_boundaries=boundaries,
        bucket_batch_sizes=[batch_size] * (len(boundaries) + 1),
    )
    return ds.unbatch()


def train_dataset(
    split: SplitData,
    vocab: Vocabulary,
    cfg: ImageConfig,
    batch_size: int,
    *,
    seed: int,
    prefetch_size: int | None = AUTOTUNE,
    cache: bool = False,
    features: np.ndarray | None = None,
    drop_remainder: bool = True,
    bucket_by_length: bool = False,
    counter: PairCounter | None = None,
) -> tf.data.Dataset:
    """Shuffled training batches of (image, caption) pairs.

    Yields {"image": float32 [B, S, S, 3]} (or {"feature": float32 [B, F]} when `features`
    [N, F] is given: no image is read), "tokens": int32 [B, T] padded with 0, "lengths":
    int32 [B] (real tokens incl. <start>/<end>) and "image_index": int32 [B]. Each iteration
    is a new epoch with a new order and new crops, repeatable for a given `seed`.
    `cache` keeps decoded, resized (not cropped) images in memory: for small datasets only.
    """
    feats = _check_split(split, features)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    total = num_pairs(split)
    steps = steps_per_epoch(split, batch_size, drop_remainder)
    if steps == 0:
        raise ValueError(
            f"batch_size {batch_size} exceeds the {total} pairs of split {split.name!r}: "
            "use a smaller batch or drop_remainder=False"
        )
    if counter is not None and counter.expected != total:
        raise ValueError(f"PairCounter expects {counter.expected} pairs, split has {total}")

    caps = _Captions(split.captions, vocab)
    boundaries = _length_buckets(caps.lengths_np) if bucket_by_length else []
    if feats is not None:
        if cache:
            log.debug("cache ignored in precomputed-feature mode: features are in memory")
        ds = _feature_pairs(split, caps, feats, seed, boundaries, batch_size)
    elif cache:
        ds = _cached_image_pairs(split, caps, cfg, seed, boundaries, batch_size)
    else:
        ds = _image_pairs(split, caps, cfg, seed, boundaries, batch_size)

    if counter is not None:
        ds = ds.map(counter.count)
    ds = _padded_batch(ds, batch_size, drop_remainder)
    options = tf.data.Options()
    # The source is a range, not files: say so, rather than let multi-worker autoshard try
    # file sharding first and warn.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    ds = _prefetch(ds.with_options(options), prefetch_size)
    log.info(
        "train pipeline %r: %d images, %d pairs, batch %d, %d steps/epoch%s%s%s",
        split.name,
        len(split.image_ids),
        total,
        batch_size,
        steps,
        ", precomputed features" if feats is not None else "",
        ", cached" if cache and feats is None else "",
        f", length buckets {boundaries}" if boundaries else "",
    )
    return ds


def _shuffled_rows(split: SplitData, seed: int) -> tf.data.Dataset:
    # Every worker builds the same seeded order, which is what makes DATA autosharding split
    # an epoch into disjoint parts.
    total = num_pairs(split)
    return tf.data.Dataset.range(total).shuffle(total, seed=seed, reshuffle_each_iteration=True)


def _crop_seeds(seed: int) -> tf.data.Dataset:
    # One random int64 per element, redrawn each epoch, turned into stateless crop seeds; the
    # offset keeps this stream from sharing its first draws with the shuffle's.
    return tf.data.Dataset.random(seed=seed + 7919, rerandomize_each_iteration=True)


def _feature_pairs(
    split: SplitData,
    caps: _Captions,
    feats: np.ndarray,
    seed: int,
    boundaries: list[int],
    batch_size: int,
) -> tf.data.Dataset:
    """Unbatched {"feature", "tokens", "lengths", "image_index"} in shuffled pair order."""
    ds = _shuffled_rows(split, seed)
    if boundaries:
        ds = _bucket_rows(ds, caps.lengths, boundaries, batch_size)
    table = tf.constant(feats)
    per_image = split.captions_per_image

    def lookup(row: tf.Tensor) -> dict[str, tf.Tensor]:
        i = row // per_image
        return {
            "feature": tf.gather(table, i),
            **caps.lookup(row),
            "image_index": tf.cast(i, tf.int32),
        }

    return ds.map(lookup, num_parallel_calls=AUTOTUNE)


def _image_pairs(
    split: SplitData,
    caps: _Captions,
    cfg: ImageConfig,
    seed: int,
    boundaries: list[int],
    batch_size: int,
) -> tf.data.Dataset:
    """Unbatched {"image", ...} in shuffled pair order, each image read when its pair comes."""
    ds = _shuffled_rows(split, seed)
    if boundaries:
        ds = _bucket_rows(ds, caps.lengths, boundaries, batch_size)
    paths = _paths(split)
    per_image = split.captions_per_image

    def load(row: tf.Tensor, r: tf.Tensor) -> dict[str, tf.Tensor]:
        i = row // per_image
        if train_needs_resize(cfg):
            data = read_canonical(paths[i], cfg.resize_size)
            image = resize_shorter(decode_image(data, cfg.resize_size), cfg.resize_size)
        else:  # RandomResizedCrop enlarges small boxes: it wants the full resolution
            image = decode_image(read_canonical(paths[i]))
        return {
            "image": train_image_transform(image, cfg, tf.stack([r, row])),
            **caps.lookup(row),
            "image_index": tf.cast(i, tf.int32),
        }

    ds = tf.data.Dataset.zip(ds, _crop_seeds(seed))
    return ds.map(load, num_parallel_calls=AUTOTUNE).ignore_errors(log_warning=True)


def _cached_image_pairs(
    split: SplitData,
    caps: _Captions,
    cfg: ImageConfig,
    seed: int,
    boundaries: list[int],
    batch_size: int,
) -> tf.data.Dataset:
    """As `_image_pairs`, but images are decoded and resized once and kept in memory.

    RandomResizedCrop then cuts its box from the resized image (shorter side
    `cfg.resize_size`) rather than the file's full resolution: the same boxes relative to
    the image, at most slightly softer when a small box is enlarged.

    The shuffle then has to hold images rather than row numbers: fine for the small datasets
    caching is meant for, and the pairs of one image share its buffer.
    """
    per_image = split.captions_per_image
    ds = _cached_pairs(split, cfg, per_image)
    ds = ds.shuffle(num_pairs(split), seed=seed, reshuffle_each_iteration=True)

    def crop(pair: tuple[tf.Tensor, tf.Tensor], r: tf.Tensor) -> dict[str, tf.Tensor]:
        row, image = pair
        return {
            "image": train_image_transform(image, cfg, tf.stack([r, row])),
            **caps.lookup(row),
            "image_index": tf.cast(row // per_image, tf.int32),
        }

    ds = tf.data.Dataset.zip(ds, _crop_seeds(seed)).map(crop, num_parallel_calls=AUTOTUNE)
    if boundaries:
        # Images are cropped to one size by now, so bucketing pads nothing but tokens.
        ds = ds.bucket_by_sequence_length(
            lambda e: e["lengths"],
            bucket_boundaries=boundaries,
            bucket_batch_sizes=[batch_size] * (len(boundaries) + 1),
            padding_values=_padding(ds),
        ).unbatch()
    return ds


def _cached_pairs(split: SplitData, cfg: ImageConfig, per_image: int) -> tf.data.Dataset:
    """(caption row, resized image) for every pair, in split order; unreadable images dropped."""
    paths = _paths(split)

    def load(i: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        data = read_canonical(paths[i], cfg.resize_size)
        return i, resize_shorter(decode_image(data, cfg.resize_size), cfg.resize_size)

    images = tf.data.Dataset.range(len(split.image_paths))
    images = images.map(load, num_parallel_calls=AUTOTUNE).ignore_errors(log_warning=True)
    images = images.cache()

    def pairs(i: tf.Tensor, image: tf.Tensor) -> tf.data.Dataset:
        rows = tf.data.Dataset.range(i * per_image, (i + 1) * per_image)
        return tf.data.Dataset.zip(rows, tf.data.Dataset.from_tensors(image).repeat())

    return images.flat_map(pairs)


def image_eval_dataset(
    split: SplitData,
    cfg: ImageConfig,
    batch_size: int,
    prefetch_size: int | None = None,
    *,
    features: np.ndarray | None = None,
) -> tf.data.Dataset:
    """The N images of a split in order, {"image": float32 [B, S, S, 3]} (or {"feature"}).

    An image that cannot be read or decoded raises InvalidArgumentError naming the file.
    """
    feats = _check_split(split, features)
    if feats is not None:
        ds = tf.data.Dataset.from_tensor_slices({"feature": feats})
        return _prefetch(ds.batch(batch_size), prefetch_size)

    n, s = len(split.image_paths), cfg.image_size
    paths = _paths(split)

    def load(i: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return i, eval_view(read_canonical(paths[i], cfg.resize_size), cfg)

    # tf.data cannot catch an error per element and name its file, so failures are dropped and
    # the gap they leave in the row sequence is turned into an error that names the file. A
    # sentinel row n closes the stream so a failure of the last image is caught too.
    ds = tf.data.Dataset.range(n).map(load, num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.ignore_errors(log_warning=True)
    sentinel = (tf.constant(n, tf.int64), tf.zeros([s, s, 3], tf.float32))
    ds = ds.concatenate(tf.data.Dataset.from_tensors(sentinel))

    def check(expected: tf.Tensor, elem: tuple[tf.Tensor, tf.Tensor]) -> Any:
        row, image = elem
        missing = paths[tf.minimum(expected, n - 1)]
        message = tf.strings.join(
            ["cannot read or decode image ", missing, " (row ", tf.strings.as_string(expected), ")"]
        )
        ok = tf.debugging.Assert(tf.equal(row, expected), [message])
        with tf.control_dependencies([ok]):
            return row + 1, (tf.identity(row), image)

    def real(row: tf.Tensor, image: tf.Tensor) -> tf.Tensor:
        return row < n

    def as_dict(row: tf.Tensor, image: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"image": image}

    ds = ds.scan(tf.constant(0, tf.int64), check).filter(real).map(as_dict)
    return _prefetch(ds.batch(batch_size), prefetch_size)


def caption_eval_dataset(
    split: SplitData, vocab: Vocabulary, batch_size: int, prefetch_size: int | None = None
) -> tf.data.Dataset:
    """The captions of a split in order (row j belongs to image j // captions_per_image):
    {"tokens": int32 [B, T] padded with 0, "lengths": int32 [B]}."""
    _check_split(split, None)
    caps = _Captions(split.captions, vocab)
    ds = tf.data.Dataset.range(len(split.captions)).map(caps.lookup)
    return _prefetch(_padded_batch(ds, batch_size), prefetch_size)


def find_unreadable_images(split: SplitData) -> list[Path]:
    """The image files of a split that cannot be read or decoded (decodes every image once)."""
    paths = _paths(split)

    ds = tf.data.Dataset.range(len(split.image_paths))
    # The shape op makes the decode a data dependency, so it is not pruned away.
    ds = ds.map(
        lambda i: (i, tf.shape(decode_image(read_canonical(paths[i])))),
        num_parallel_calls=AUTOTUNE,
    ).ignore_errors()
    readable = {int(i) for i, _ in ds.as_numpy_iterator()}
    bad = [p for k, p in enumerate(split.image_paths) if k not in readable]
    if bad:
        log.warning("%d unreadable image(s) in split %r: %s", len(bad), split.name, bad[:10])
    return [Path(p) for p in bad]
