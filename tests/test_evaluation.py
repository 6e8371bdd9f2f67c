"""The vectorised protocol against a transcription of the original's per-query loops."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.evaluation_reference import naive_i2t, naive_metrics, naive_order_row, naive_t2i
from vsepp.evaluation import (
    DEFAULT_MAX_BYTES,
    evaluate,
    format_metrics,
    i2t_ranks,
    order_sim,
    recall_metrics,
    t2i_ranks,
)

# --- data ----------------------------------------------------------------------------------


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def random_pairs(n: int, d: int, seed: int, measure: str = "cosine") -> tuple[np.ndarray, ...]:
    """Captions near their image, float32 like an encoder's output."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((n, d))
    captions = np.repeat(images, 5, axis=0) + 1.5 * rng.standard_normal((5 * n, d))
    images, captions = _normalise(images), _normalise(captions)
    if measure == "order":  # order embeddings live in the positive orthant (use_abs)
        images, captions = np.abs(images), np.abs(captions)
    return images.astype(np.float32), captions.astype(np.float32)


def tied_pairs(n: int, d: int, seed: int) -> tuple[np.ndarray, ...]:
    """Few distinct values and duplicated rows, so most scores tie exactly.

    Entries are multiples of 1/4 in [-1, 1]: every product and sum is exact in float64,
    so a score is the same number whichever BLAS kernel or summation order computes it.
    """
    rng = np.random.default_rng(seed)
    images = rng.integers(-2, 3, size=(n, d)) / 4.0
    captions = rng.integers(-2, 3, size=(5 * n, d)) / 4.0
    images[1::3] = images[0]  # duplicated images
    captions[7::4] = captions[2]  # duplicated captions, across owners
    captions[5 * (n // 2) : 5 * (n // 2) + 5] = images[n // 2]  # an exact match
    return images, captions


CASES = [
    pytest.param(random_pairs(1, 4, 0), id="n1"),
    pytest.param(random_pairs(2, 8, 1), id="n2"),
    pytest.param(random_pairs(37, 16, 2), id="n37"),
    pytest.param(random_pairs(120, 32, 3), id="n120"),
    pytest.param(tied_pairs(23, 5, 4), id="ties-n23"),
    pytest.param(tied_pairs(60, 3, 5), id="ties-n60"),
]
ORDER_CASES = [
    pytest.param(random_pairs(2, 8, 6, "order"), id="order-n2"),
    pytest.param(random_pairs(41, 12, 7, "order"), id="order-n41"),
    pytest.param(tuple(np.abs(x) for x in tied_pairs(30, 4, 8)), id="order-ties-n30"),
]


# --- equivalence with the original ---------------------------------------------------------


@pytest.mark.parametrize("data", CASES)
def test_ranks_match_naive_cosine(data: tuple[np.ndarray, np.ndarray]) -> None:
    images, captions = data
    np.testing.assert_array_equal(i2t_ranks(images, captions), naive_i2t(images, captions))
    np.testing.assert_array_equal(t2i_ranks(images, captions), naive_t2i(images, captions))


@pytest.mark.parametrize("data", ORDER_CASES)
def test_ranks_match_naive_order(data: tuple[np.ndarray, np.ndarray]) -> None:
    images, captions = data
    np.testing.assert_array_equal(
        i2t_ranks(images, captions, "order"), naive_i2t(images, captions, "order")
    )
    np.testing.assert_array_equal(
        t2i_ranks(images, captions, "order"), naive_t2i(images, captions, "order")
    )


def test_tie_cases_really_tie() -> None:
    images, captions = tied_pairs(23, 5, 4)
    scores = images @ captions.T
    assert len(np.unique(scores)) < scores.size / 20


@pytest.mark.parametrize(
    ("data", "measure"),
    [pytest.param(*p.values, "cosine", id=p.id) for p in CASES]
    + [pytest.param(*p.values, "order", id=p.id) for p in ORDER_CASES],
)
def test_evaluate_matches_naive_metrics(data: tuple[np.ndarray, np.ndarray], measure: str) -> None:
    images, captions = data
    got = evaluate(images, captions, measure=measure)
    want_i2t = naive_metrics(naive_i2t(images, captions, measure))
    want_t2i = naive_metrics(naive_t2i(images, captions, measure))
    keys = ("r1", "r5", "r10", "medr", "meanr")
    assert tuple(got["i2t"][k] for k in keys) == want_i2t
    assert tuple(got["t2i"][k] for k in keys) == want_t2i
    r, ri = want_i2t, want_t2i  # summed left to right, as the original does
    assert got["rsum"] == r[0] + r[1] + r[2] + ri[0] + ri[1] + ri[2]
    assert got["n_images"] == len(images)


def test_order_sim_matches_definition() -> None:
    images, captions = random_pairs(6, 7, 9, "order")
    want = np.stack([naive_order_row(im.astype(np.float64), captions) for im in images])
    np.testing.assert_array_equal(order_sim(images, captions), want)
    np.testing.assert_array_equal(order_sim(images, captions, max_bytes=1), want)
    assert order_sim(images, images).diagonal().tolist() == [0.0] * 6


# --- hand cases ----------------------------------------------------------------------------


def test_perfect_embeddings() -> None:
    images = np.eye(4)
    captions = np.repeat(images, 5, axis=0)
    metrics = evaluate(images, captions)
    for direction in ("i2t", "t2i"):
        assert metrics[direction] == {"r1": 100.0, "r5": 100.0, "r10": 100.0, "medr": 1.0,
                                      "meanr": 1.0}  # fmt: skip
    assert metrics["rsum"] == 600.0
    assert metrics["n_images"] == 4


def test_all_scores_tied_higher_index_first() -> None:
    n = 3
    images, captions = np.ones((n, 2)), np.ones((5 * n, 2))
    # Everything ties, so the ranking is simply by index, highest first.
    # i2t: image i's best caption is 5i+4, behind the 5n-1-(5i+4) captions after it.
    assert i2t_ranks(images, captions).tolist() == [10, 5, 0]
    # t2i: caption j's image j//5 is behind the n-1-j//5 images after it.
    assert t2i_ranks(images, captions).tolist() == [2] * 5 + [1] * 5 + [0] * 5


def test_hand_ranks() -> None:
    # Two images on the axes; image 0's captions point away from it except caption 3.
    images = np.array([[1.0, 0.0], [0.0, 1.0]])
    captions = np.array(
        [[0.0, 1.0]] * 3 + [[0.6, 0.8]] + [[0.0, 1.0]]  # image 0's
        + [[0.0, 1.0]] * 5  # image 1's
    )  # fmt: skip
    # Image 0 scores: 0,0,0,.6,0 | 0 x5 -> caption 3 is first: rank 0.
    # Image 1 scores: 1,1,1,.8,1 | 1 x5 -> ties by index: 9,8,7,6,5 first -> rank 0.
    assert i2t_ranks(images, captions).tolist() == [0, 0]
    # Captions 0-2 and 4 prefer image 1 (score 1 vs 0): rank 1; caption 3 scores .6 vs .8.
    assert t2i_ranks(images, captions).tolist() == [1, 1, 1, 1, 1] + [0] * 5
    metrics = recall_metrics(np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0]))
    assert metrics == {"r1": 50.0, "r5": 100.0, "r10": 100.0, "medr": 1.0, "meanr": 1.5}


def test_recall_metrics_formula() -> None:
    ranks = np.array([0, 3, 4, 5, 9, 10, 120])
    m = recall_metrics(ranks)
    assert m["r1"] == 100.0 * 1 / 7
    assert m["r5"] == 100.0 * 3 / 7
    assert m["r10"] == 100.0 * 5 / 7
    assert m["medr"] == 6.0  # median 5 -> 5 + 1
    assert m["meanr"] == ranks.mean() + 1
    assert recall_metrics([0, 1])["medr"] == 1.0  # floor(0.5) + 1


# --- folds, chunking, validation, formatting ---------------------------------------------


def test_fold5_averages_independent_folds() -> None:
    images, captions = random_pairs(30, 8, 10)
    metrics = evaluate(images, captions, fold5=True)
    assert {k: metrics[k] for k in ("i2t", "t2i", "rsum", "n_images")} == evaluate(images, captions)
    assert len(metrics["folds"]) == 5
    for k, fold in enumerate(metrics["folds"]):
        assert fold == evaluate(images[6 * k : 6 * k + 6], captions[30 * k : 30 * k + 30])
    mean = metrics["mean_of_folds"]
    assert mean["n_images"] == 6
    for direction in ("i2t", "t2i"):
        for key in ("r1", "r5", "r10", "medr", "meanr"):
            want = np.mean([f[direction][key] for f in metrics["folds"]])
            assert mean[direction][key] == pytest.approx(want, abs=1e-12)
    assert mean["rsum"] == pytest.approx(np.mean([f["rsum"] for f in metrics["folds"]]))
    # A 6-image fold is easier than the 30-image whole.
    assert mean["rsum"] >= metrics["rsum"]


def test_fold5_needs_multiple_of_five() -> None:
    images, captions = random_pairs(7, 4, 11)
    with pytest.raises(ValueError, match="divisible by 5"):
        evaluate(images, captions, fold5=True)


@pytest.mark.parametrize("measure", ["cosine", "order"])
@pytest.mark.parametrize("seed", [12, 13])
def test_chunking_gives_identical_results(measure: str, seed: int) -> None:
    if seed == 12:
        images, captions = random_pairs(45, 16, seed, measure)
    else:
        images, captions = (np.abs(x) for x in tied_pairs(45, 4, seed))
    full_i2t = i2t_ranks(images, captions, measure)
    full_t2i = t2i_ranks(images, captions, measure)
    one = evaluate(images, captions, measure=measure)
    # 1 byte: one query row per chunk (and one pair per order block); 40 KB: a few rows.
    for max_bytes in (1, 40_000):
        np.testing.assert_array_equal(
            i2t_ranks(images, captions, measure, max_bytes=max_bytes), full_i2t
        )
        np.testing.assert_array_equal(
            t2i_ranks(images, captions, measure, max_bytes=max_bytes), full_t2i
        )
        assert evaluate(images, captions, measure=measure, max_bytes=max_bytes) == one
    assert recall_metrics(full_i2t) == one["i2t"]
    assert recall_metrics(full_t2i) == one["t2i"]


@pytest.mark.parametrize(
    ("images", "captions", "message"),
    [
        (np.zeros((3, 4)), np.zeros((14, 4)), "5 captions per image: 3 images need 15"),
        (np.zeros((3, 4)), np.zeros((3, 4)), "5 captions per image"),
        (np.zeros((3, 4)), np.zeros((15, 5)), "embedding sizes differ"),
        (np.zeros(4), np.zeros((5, 4)), "must be 2-D"),
        (np.zeros((0, 4)), np.zeros((0, 4)), "no images"),
        (np.full((1, 2), np.nan), np.zeros((5, 2)), "images contain NaN"),
        (np.zeros((1, 2)), np.full((5, 2), np.inf), "captions contain NaN"),
    ],
)
def test_bad_inputs_raise(images: np.ndarray, captions: np.ndarray, message: str) -> None:
    for fn in (i2t_ranks, t2i_ranks, evaluate):
        with pytest.raises(ValueError, match=message):
            fn(images, captions)


def test_bad_measure_and_ranks_raise() -> None:
    images, captions = random_pairs(2, 4, 14)
    with pytest.raises(ValueError, match="unknown measure 'dot'"):
        evaluate(images, captions, measure="dot")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty 1-D"):
        recall_metrics(np.array([]))


def test_format_metrics_layout() -> None:
    images, captions = random_pairs(10, 8, 15)
    metrics = evaluate(images, captions, fold5=True)
    text = format_metrics(metrics)
    assert "Mean of 5 folds (2 images, 10 captions)" in text
    assert "Full set (10 images, 50 captions)" in text
    header = next(line for line in text.splitlines() if "R@1" in line)
    assert header.split() == ["R@1", "R@5", "R@10", "Med", "r", "Mean", "r"]
    row = next(line for line in text.splitlines()[::-1] if line.startswith("Image to text"))
    values = [float(v) for v in row.removeprefix("Image to text").split()]
    i2t = metrics["i2t"]
    assert values == [round(i2t[k], 1) for k in ("r1", "r5", "r10", "medr", "meanr")]
    assert f"rsum: {metrics['rsum']:.1f}" in text
    single = format_metrics(evaluate(images, captions))
    assert single.splitlines()[0] == "Split (10 images, 50 captions)"
    assert "Text to image" in single
    assert not math.isnan(metrics["rsum"])


# --- float32 scoring with float64 re-scoring ------------------------------------------------


def near_tie_pairs(n: int, d: int, seed: int, eps: float) -> tuple[np.ndarray, ...]:
    """Unit float64 embeddings whose scores differ by about eps**2, far below float32's
    resolution (~1e-7) and above float64's (~1e-15): float32 alone ranks them by noise.

    Every vector is one of three base directions nudged by `eps` and renormalised (which
    leaves a score change of second order, eps**2), so each query sees hundreds of keys
    within float32's error of its positive; a few are exact copies (float64 ties).
    """
    rng = np.random.default_rng(seed)
    base = _normalise(rng.standard_normal((3, d)))
    images = _normalise(base[rng.integers(0, 3, n)] + eps * rng.standard_normal((n, d)))
    captions = base[rng.integers(0, 3, 5 * n)] + eps * rng.standard_normal((5 * n, d))
    captions = _normalise(captions)
    captions[9::7] = captions[3]  # exact duplicates: float64 ties
    images[2::5] = images[1]
    return images, captions


MIXED_CASES = [
    *CASES,
    pytest.param(random_pairs(300, 64, 11), id="n300"),
    pytest.param(tuple(x.astype(np.float64) for x in random_pairs(200, 48, 12)), id="f64-n200"),
    pytest.param(near_tie_pairs(150, 32, 13, 1e-4), id="near-ties-1e-8"),
    pytest.param(near_tie_pairs(120, 64, 14, 1e-5), id="near-ties-1e-10"),
    pytest.param(near_tie_pairs(90, 16, 15, 3e-6), id="near-ties-1e-11"),
]


@pytest.mark.parametrize("data", MIXED_CASES)
def test_mixed_precision_ranks_equal_the_float64_ranks(data: tuple[np.ndarray, ...]) -> None:
    from vsepp.evaluation import both_ranks

    images, captions = data
    want = both_ranks(images, captions, precision="float64")
    for max_bytes in (DEFAULT_MAX_BYTES, 4096):  # one chunk, and many
        got = both_ranks(images, captions, precision="mixed", max_bytes=max_bytes)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_near_ties_defeat_float32_alone() -> None:
    """The adversarial case is real: bare float32 scores give other ranks than float64."""
    from vsepp.evaluation import both_ranks

    images, captions = near_tie_pairs(150, 32, 13, 1e-4)
    want = both_ranks(images, captions, precision="float64")
    f32 = both_ranks(images.astype(np.float32), captions.astype(np.float32), precision="float64")
    assert not np.array_equal(f32[1], want[1])
    got = both_ranks(images, captions, precision="mixed")
    np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.parametrize(("rows", "words"), [(1, 1), (7, 3), (255, 255), (256, 255), (600, 2)])
def test_mask_counts_by_words_equal_count_nonzero(rows: int, words: int) -> None:
    """The uint64-lane counts at their limits: 255 words a row, more than 255 rows, all True."""
    from vsepp.evaluation import _column_counts, _row_counts

    rng = np.random.default_rng(rows * 1000 + words)
    for mask in (rng.random((rows, 8 * words)) < 0.3, np.ones((rows, 8 * words), dtype=bool)):
        np.testing.assert_array_equal(_row_counts(mask), np.count_nonzero(mask, axis=1))
        np.testing.assert_array_equal(_column_counts(mask), np.count_nonzero(mask, axis=0))


def exact_integers(*arrays: np.ndarray) -> list[np.ndarray]:
    """The arrays' values as Python ints on one common power-of-two scale: exact, so their
    dot products are the real ones (times a positive constant), with no rounding at all."""
    floats = [np.asarray(a, dtype=np.float64) for a in arrays]
    low = min(int(np.frexp(a)[1][a != 0].min(initial=0)) for a in floats) - 53
    out = []
    for a in floats:
        mantissa, exponent = np.frexp(a)
        ints = (mantissa * 2.0**53).astype(np.int64)  # exact: 53 significant bits
        obj = np.empty(a.shape, dtype=object)
        for idx in np.ndindex(a.shape):
            obj[idx] = int(ints[idx]) * 2 ** int(exponent[idx] - 53 - low) if ints[idx] else 0
        out.append(obj)
    return out


def exact_ranks(images: np.ndarray, captions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ranks by the documented tie rule over the EXACT scores (integer arithmetic): what no
    summation order, BLAS kernel or CPU can change."""
    ims, caps = exact_integers(images, captions)
    scores = ims.dot(caps.T)

    def position(row: np.ndarray, j: int) -> int:
        return int(np.count_nonzero(row > row[j]) + np.count_nonzero(row[j + 1 :] == row[j]))

    n = images.shape[0]
    i2t = [min(position(scores[i], 5 * i + c) for c in range(5)) for i in range(n)]
    t2i = [position(scores[:, j], j // 5) for j in range(5 * n)]
    return np.array(i2t), np.array(t2i)


EXACT_CASES = [
    pytest.param(random_pairs(120, 32, 3), id="n120"),
    pytest.param(tied_pairs(23, 5, 4), id="ties-n23"),
    pytest.param(near_tie_pairs(150, 32, 13, 1e-4), id="near-ties-1e-8"),
    pytest.param(near_tie_pairs(120, 64, 14, 1e-5), id="near-ties-1e-10"),
    pytest.param(near_tie_pairs(90, 16, 15, 3e-6), id="near-ties-1e-11"),
    pytest.param(
        tuple(x.astype(np.float32) for x in near_tie_pairs(100, 24, 17, 1e-4)), id="f32-near-ties"
    ),
]


@pytest.mark.parametrize("data", EXACT_CASES)
def test_ranks_are_the_exact_scores_ranks_in_any_summation_order(
    data: tuple[np.ndarray, ...],
) -> None:
    """Both paths give the ranks of the exact scores, exact copies tied by the index rule,
    whatever order the products are summed in: the dimensions as given, reversed (what
    another CPU's kernel does to the float64 sums) and shuffled, in one chunk and many."""
    from vsepp.evaluation import both_ranks

    images, captions = data
    want = exact_ranks(images, captions)
    d = images.shape[1]
    orders = [np.arange(d), np.arange(d)[::-1], np.random.default_rng(d).permutation(d)]
    for order in orders:
        ims, caps = np.ascontiguousarray(images[:, order]), np.ascontiguousarray(captions[:, order])
        for precision, max_bytes in (("float64", DEFAULT_MAX_BYTES), ("float64", 4096),
                                     ("mixed", DEFAULT_MAX_BYTES), ("mixed", 4096)):  # fmt: skip
            got = both_ranks(ims, caps, precision=precision, max_bytes=max_bytes)  # type: ignore[arg-type]
            np.testing.assert_array_equal(got[0], want[0], err_msg=f"i2t {precision} {max_bytes}")
            np.testing.assert_array_equal(got[1], want[1], err_msg=f"t2i {precision} {max_bytes}")


def test_float64_scores_alone_break_exact_ties() -> None:
    """The case is real: float64 products in two summation orders disagree on some pair this
    set ranks by an exact tie or a near tie, so a float64 reference alone is not portable."""
    images, captions = near_tie_pairs(150, 32, 13, 1e-4)
    forward = images @ captions.T
    backward = images[:, ::-1] @ captions[:, ::-1].T
    assert not np.array_equal(forward, backward)


def test_mixed_precision_blocks_span_rows_and_columns() -> None:
    """More captions than a block's columns and images than its rows, a narrower last block
    (padding), near ties and exact copies, float64 and float32 input: the exact ranks."""
    from vsepp.evaluation import both_ranks

    images, captions = near_tie_pairs(430, 16, 16, 1e-4)
    for ims, caps in ((images, captions), (images.astype(np.float32), captions.astype(np.float32))):
        want = exact_ranks(ims, caps)
        # 2,150 captions: a block of 2,040 columns and one of 110; 7 or all 430 rows a block.
        for max_bytes in (8 * 2 * 2040 * 7, DEFAULT_MAX_BYTES):
            got = both_ranks(ims, caps, precision="mixed", max_bytes=max_bytes)
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])


def test_unknown_precision_is_an_error() -> None:
    images, captions = random_pairs(2, 4, 0)
    with pytest.raises(ValueError, match="precision"):
        evaluate(images, captions, precision="float16")  # type: ignore[arg-type]


def test_difference_signs_are_exact() -> None:
    """sign(q.a - q.b) of the real values: where float64 sums cancel to the wrong sign, on
    exact ties, and for entries too small or too large for exact float64 products (the
    Fraction fallback), against Fraction arithmetic."""
    from fractions import Fraction

    from vsepp.exact import difference_signs

    def fraction_sign(q: np.ndarray, a: np.ndarray, b: np.ndarray) -> int:
        terms = zip(q, a, b, strict=True)
        total = sum(Fraction(x) * (Fraction(y) - Fraction(z)) for x, y, z in terms)
        return (total > 0) - (total < 0)

    rng = np.random.default_rng(3)
    q = rng.standard_normal((200, 7))
    a = rng.standard_normal((200, 7))
    b = a + rng.standard_normal((200, 7)) * 1e-15 * (rng.random((200, 1)) < 0.5)
    b[::9] = a[::9]  # exact ties
    q[5], a[5], b[5] = [1.0, 1.0, 1.0, 0, 0, 0, 0], [1e16, 1.0, -1e16, 0, 0, 0, 0], np.zeros(7)
    q[6, 0], a[6, 1], b[6, 2] = 1e-300, 1e200, 3e-310  # outside TwoProduct's exact range
    assert np.float64(q[5] @ a[5]) == 0.0  # float64 says a tie; the exact value is 1
    got = difference_signs(q, a, b)
    want = [fraction_sign(*rows) for rows in zip(q, a, b, strict=True)]
    np.testing.assert_array_equal(got, want)
    assert got[5] == 1 and (got[::9] == 0).all()
