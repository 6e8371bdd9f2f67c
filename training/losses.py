"""VSE++ hinge-based triplet ranking loss (Faghri et al., BMVC 2018) in TensorFlow.

A transcription of ``ContrastiveLoss`` in fartashf/vsepp ``model.py``. For a batch of B
matching pairs (image i goes with caption i) and the score matrix ``scores = sim(im, s)``:

- ``cost_s[i, j] = relu(margin + scores[i, j] - scores[i, i])``: caption j is a negative
  for image i (caption retrieval);
- ``cost_im[i, j] = relu(margin + scores[i, j] - scores[j, j])``: image i is a negative for
  caption j (image retrieval);
- the diagonal (the positives) is zeroed in both;
- VSE++ (``max_violation``) keeps the hardest negative per query, VSE0 sums them all.

The loss is the SUM over the batch and both directions, not the mean, as in the original.
Under ``tf.distribute`` give it the GLOBAL batch (gather the replicas' embeddings first):
the hardest negative of a query must be searched among all B captions, not one shard.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from vsepp.evaluation import MEASURES, Measure

DEFAULT_MARGIN = 0.2


def cosine_sim(im: tf.Tensor, s: tf.Tensor) -> tf.Tensor:
    """Score matrix ``im @ s^T`` [n_im, n_s]; both must already be L2-normalised."""
    return tf.matmul(im, s, transpose_b=True)


def order_sim(im: tf.Tensor, s: tf.Tensor) -> tf.Tensor:
    """Order-embedding score [n_im, n_s]: ``-||max(0, s_j - im_i)||_2`` (Vendrov et al.)."""
    diff = tf.nn.relu(s[tf.newaxis, :, :] - im[:, tf.newaxis, :])
    squared = tf.reduce_sum(tf.square(diff), axis=-1)
    # d sqrt(x)/dx is infinite at 0 and relu passes a zero gradient there, so 0 * inf would
    # put NaN into every weight. Zeros bypass the sqrt, which makes their gradient 0.
    positive = squared > 0.0
    safe = tf.where(positive, squared, tf.ones_like(squared))
    return -tf.where(positive, tf.sqrt(safe), tf.zeros_like(squared))


SIMILARITIES: dict[str, Callable[[tf.Tensor, tf.Tensor], tf.Tensor]] = {
    "cosine": cosine_sim,
    "order": order_sim,
}


def _violations(scores: tf.Tensor, margin: float) -> tuple[tf.Tensor, tf.Tensor]:
    """Hinge costs ``(cost_s, cost_im)`` of a square score matrix, diagonals zeroed."""
    scores = tf.cast(scores, tf.float32)
    if scores.shape.rank is not None and scores.shape.rank != 2:
        raise ValueError(f"scores must be a matrix [B, B], got shape {scores.shape}")
    rows, cols = scores.shape[0], scores.shape[-1]
    if rows is not None and cols is not None and rows != cols:
        raise ValueError(f"scores must be square (B images x B captions), got {scores.shape}")
    diagonal = tf.linalg.diag_part(scores)
    # margin + (scores - diagonal), not (margin + scores) - diagonal: a negative scoring as
    # high as the positive then costs exactly `margin`, so a collapsed embedding gives
    # exactly 2*B*margin rather than something a few ulps off.
    cost_s = tf.nn.relu(margin + (scores - diagonal[:, tf.newaxis]))
    cost_im = tf.nn.relu(margin + (scores - diagonal[tf.newaxis, :]))
    zeros = tf.zeros_like(diagonal)
    return tf.linalg.set_diag(cost_s, zeros), tf.linalg.set_diag(cost_im, zeros)


def sum_violation_loss(scores: tf.Tensor, margin: float = DEFAULT_MARGIN) -> tf.Tensor:
    """VSE0 loss: the sum of the hinge costs over every negative, both directions."""
    cost_s, cost_im = _violations(scores, margin)
    return tf.reduce_sum(cost_s) + tf.reduce_sum(cost_im)


def max_violation_loss(scores: tf.Tensor, margin: float = DEFAULT_MARGIN) -> tf.Tensor:
    """VSE++ loss: per query, only the hardest negative's cost, summed over both directions."""
    cost_s, cost_im = _violations(scores, margin)
    # Hardest caption per image (along a row) and hardest image per caption (down a column).
    return tf.reduce_sum(tf.reduce_max(cost_s, axis=1)) + tf.reduce_sum(
        tf.reduce_max(cost_im, axis=0)
    )


def contrastive_loss(
    im: tf.Tensor,
    s: tf.Tensor,
    *,
    margin: float = DEFAULT_MARGIN,
    max_violation: bool = True,
    measure: Measure = "cosine",
) -> tf.Tensor:
    """Triplet ranking loss of a batch of matching pairs ``(im[i], s[i])``, a float32 scalar.

    ``im`` [B, D] and ``s`` [B, D] are the image and caption embeddings (L2-normalised for
    the cosine measure). They are cast to float32, so mixed-precision outputs are fine.
    """
    if measure not in SIMILARITIES:
        raise ValueError(f"unknown measure {measure!r}; expected one of {MEASURES}")
    im = tf.cast(im, tf.float32)
    s = tf.cast(s, tf.float32)
    if im.shape.rank is not None and s.shape.rank is not None:
        if im.shape.rank != 2 or s.shape.rank != 2:
            raise ValueError(f"embeddings must be [B, D], got {im.shape} and {s.shape}")
        if not im.shape[:1].is_compatible_with(s.shape[:1]):
            raise ValueError(f"batch sizes differ: {im.shape[0]} images, {s.shape[0]} captions")
        if not im.shape[1:].is_compatible_with(s.shape[1:]):
            raise ValueError(f"embedding sizes differ: images {im.shape}, captions {s.shape}")
    scores = SIMILARITIES[measure](im, s)
    if max_violation:
        return max_violation_loss(scores, margin)
    return sum_violation_loss(scores, margin)
