"""The VSE++ loss against a plain-Python transcription of the original ContrastiveLoss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from training.losses import (
    contrastive_loss,
    cosine_sim,
    max_violation_loss,
    order_sim,
    sum_violation_loss,
)


def naive_scores(im: np.ndarray, s: np.ndarray, measure: str) -> list[list[float]]:
    """scores[i][j] = sim(image i, caption j), one pair at a time, in float64."""
    out = []
    for a in im.astype(np.float64):
        row = []
        for b in s.astype(np.float64):
            if measure == "order":
                row.append(-math.sqrt(sum(max(0.0, y - x) ** 2 for x, y in zip(a, b, strict=True))))
            else:
                row.append(float(np.dot(a, b)))
        out.append(row)
    return out


def naive_loss(
    im: np.ndarray, s: np.ndarray, margin: float, max_violation: bool, measure: str
) -> float:
    scores = naive_scores(im, s, measure)
    b = len(scores)
    total = 0.0
    for i in range(b):
        # Caption retrieval: captions j != i are negatives for image i.
        cost_s = [max(0.0, margin + scores[i][j] - scores[i][i]) for j in range(b) if j != i]
        # Image retrieval: images j != i are negatives for caption i.
        cost_im = [max(0.0, margin + scores[j][i] - scores[i][i]) for j in range(b) if j != i]
        if max_violation:
            total += max(cost_s, default=0.0) + max(cost_im, default=0.0)
        else:
            total += sum(cost_s) + sum(cost_im)
    return total


def embeddings(b: int, d: int, seed: int, measure: str) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised pairs (abs-valued for order, as the original's use_abs), float32."""
    rng = np.random.default_rng(seed)
    im = rng.standard_normal((b, d))
    s = im + 0.8 * rng.standard_normal((b, d))
    im /= np.linalg.norm(im, axis=1, keepdims=True)
    s /= np.linalg.norm(s, axis=1, keepdims=True)
    if measure == "order":
        im, s = np.abs(im), np.abs(s)
    return im.astype(np.float32), s.astype(np.float32)


@pytest.mark.parametrize("measure", ["cosine", "order"])
@pytest.mark.parametrize("max_violation", [True, False])
@pytest.mark.parametrize(("b", "d"), [(1, 4), (2, 3), (3, 8), (8, 16), (17, 5)])
def test_matches_naive(b: int, d: int, max_violation: bool, measure: str) -> None:
    im, s = embeddings(b, d, seed=b * 100 + d, measure=measure)
    # A margin large enough that many negatives violate it, so the hinge is exercised.
    margin = 0.2 if measure == "cosine" else 0.05
    got = contrastive_loss(im, s, margin=margin, max_violation=max_violation, measure=measure)
    want = naive_loss(im, s, margin, max_violation, measure)
    assert got.dtype == tf.float32
    assert got.shape == ()
    np.testing.assert_allclose(float(got), want, rtol=2e-6, atol=2e-6)


def test_similarities_match_naive() -> None:
    im, s = embeddings(5, 6, seed=1, measure="order")
    for fn, measure in ((cosine_sim, "cosine"), (order_sim, "order")):
        got = fn(tf.constant(im), tf.constant(s)).numpy()
        assert got.shape == (5, 5)
        np.testing.assert_allclose(got, naive_scores(im, s, measure), rtol=1e-6, atol=1e-6)
    # Rectangular: [n_im, n_s], images first.
    assert order_sim(tf.constant(im[:2]), tf.constant(s)).shape == (2, 5)


def test_hand_case_hardest_negative() -> None:
    scores = tf.constant([[0.9, 0.5, 0.8], [0.1, 0.7, 0.6], [0.3, 0.4, 0.2]])
    # Rows (caption retrieval), margin 0.2, diag 0.9/0.7/0.2:
    #   row 0: 0.5-0.9+.2=-.2->0, 0.8-0.9+.2=.1   -> sum .1,  max .1
    #   row 1: 0.1-0.7+.2=0,      0.6-0.7+.2=.1   -> sum .1,  max .1
    #   row 2: 0.3-0.2+.2=.3,     0.4-0.2+.2=.4   -> sum .7,  max .4
    # Columns (image retrieval):
    #   col 0: 0.1-0.9+.2=0,      0.3-0.9+.2=0    -> sum 0,   max 0
    #   col 1: 0.5-0.7+.2=0,      0.4-0.7+.2=0    -> sum 0,   max 0
    #   col 2: 0.8-0.2+.2=.8,     0.6-0.2+.2=.6   -> sum 1.4, max .8
    assert float(sum_violation_loss(scores, 0.2)) == pytest.approx(0.9 + 1.4, abs=1e-6)
    assert float(max_violation_loss(scores, 0.2)) == pytest.approx(0.6 + 0.8, abs=1e-6)


@pytest.mark.parametrize("measure", ["cosine", "order"])
@pytest.mark.parametrize("b", [2, 4, 8, 5])
def test_collapsed_embeddings(b: int, measure: str) -> None:
    # Every embedding identical: every negative scores as high as the positive.
    im = np.zeros((b, 6), np.float32)
    im[:, 0] = 1.0
    for margin in (0.25, 0.2):
        hardest = contrastive_loss(im, im, margin=margin, measure=measure)
        every = contrastive_loss(im, im, margin=margin, max_violation=False, measure=measure)
        if margin == 0.25:  # dyadic: every partial sum is exact in float32
            assert float(hardest) == 2 * b * margin
            assert float(every) == 2 * b * (b - 1) * margin
        else:
            assert float(hardest) == pytest.approx(2 * b * margin, rel=1e-6)
            assert float(every) == pytest.approx(2 * b * (b - 1) * margin, rel=1e-6)


def test_single_pair_has_no_negatives() -> None:
    im, s = embeddings(1, 4, seed=3, measure="cosine")
    assert float(contrastive_loss(im, s)) == 0.0
    assert float(contrastive_loss(im, s, max_violation=False)) == 0.0


@pytest.mark.parametrize("max_violation", [True, False])
def test_order_gradient_finite_at_zero_difference(max_violation: bool) -> None:
    im_np, s_np = embeddings(4, 5, seed=4, measure="order")
    s_np[0] = im_np[0]  # difference exactly 0 on a positive pair
    s_np[1] = im_np[1] * 0.5  # s <= im everywhere: clamped to 0
    collapsed = np.repeat(im_np[:1], 4, axis=0)  # every pair at distance 0
    for im_v, s_v in ((im_np, s_np), (collapsed, collapsed)):
        im, s = tf.Variable(im_v), tf.Variable(s_v)
        with tf.GradientTape() as tape:
            loss = contrastive_loss(im, s, margin=0.2, max_violation=max_violation, measure="order")
        grads = tape.gradient(loss, [im, s])
        assert np.isfinite(float(loss))
        for g in grads:
            assert g is not None
            assert np.isfinite(g.numpy()).all()
    # The safe sqrt gives the distance's gradient as 0 at 0 (a subgradient), not NaN.
    x = tf.Variable(np.ones((2, 3), np.float32))
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(order_sim(x, x))
    assert np.array_equal(tape.gradient(total, x).numpy(), np.zeros((2, 3), np.float32))


@pytest.mark.parametrize("measure", ["cosine", "order"])
def test_gradient_matches_finite_differences(measure: str) -> None:
    im_np, s_np = embeddings(4, 3, seed=5, measure=measure)
    im_np, s_np = im_np.astype(np.float64), s_np.astype(np.float64)
    im = tf.Variable(im_np.astype(np.float32))
    with tf.GradientTape() as tape:
        loss = contrastive_loss(im, s_np, margin=0.2, max_violation=False, measure=measure)
    grad = tape.gradient(loss, im).numpy()
    eps = 1e-4
    for i, j in [(0, 0), (1, 2), (3, 1)]:
        plus, minus = im_np.copy(), im_np.copy()
        plus[i, j] += eps
        minus[i, j] -= eps
        numeric = (
            naive_loss(plus, s_np, 0.2, False, measure)
            - naive_loss(minus, s_np, 0.2, False, measure)
        ) / (2 * eps)
        assert grad[i, j] == pytest.approx(numeric, abs=1e-3)


def test_runs_under_tf_function_with_dynamic_batch() -> None:
    spec = tf.TensorSpec([None, 8], tf.float32)

    @tf.function(input_signature=[spec, spec])
    def step(im: tf.Tensor, s: tf.Tensor) -> tuple[tf.Tensor, ...]:
        return (
            contrastive_loss(im, s),
            contrastive_loss(im, s, max_violation=False),
            contrastive_loss(im, s, measure="order"),
        )

    for b in (1, 2, 6):
        im, s = embeddings(b, 8, seed=b, measure="order")
        got = step(tf.constant(im), tf.constant(s))
        want = (
            naive_loss(im, s, 0.2, True, "cosine"),
            naive_loss(im, s, 0.2, False, "cosine"),
            naive_loss(im, s, 0.2, True, "order"),
        )
        np.testing.assert_allclose([float(g) for g in got], want, rtol=2e-6, atol=2e-6)
    assert step.experimental_get_tracing_count() == 1  # one graph for every batch size


def test_casts_half_precision_to_float32() -> None:
    im, s = embeddings(3, 4, seed=6, measure="cosine")
    loss = contrastive_loss(tf.constant(im, tf.float16), tf.constant(s, tf.float16))
    assert loss.dtype == tf.float32


@pytest.mark.parametrize(
    ("im_shape", "s_shape", "message"),
    [
        ((3, 4), (2, 4), "batch sizes differ"),
        ((3, 4), (3, 5), "embedding sizes differ"),
        ((3,), (3,), "must be \\[B, D\\]"),
    ],
)
def test_bad_shapes_raise(
    im_shape: tuple[int, ...], s_shape: tuple[int, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        contrastive_loss(np.zeros(im_shape, np.float32), np.zeros(s_shape, np.float32))


def test_bad_measure_and_non_square_scores_raise() -> None:
    with pytest.raises(ValueError, match="unknown measure 'dot'"):
        contrastive_loss(np.zeros((2, 2)), np.zeros((2, 2)), measure="dot")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="square"):
        max_violation_loss(tf.zeros((2, 3)))
