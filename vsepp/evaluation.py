"""The VSE++ retrieval protocol: Recall@K, median and mean rank, image<->text, vectorised.

Same numbers as ``i2t``/``t2i`` in fartashf/vsepp ``evaluation.py``, without a Python loop
per query, and with the score matrix built in row chunks so that the 5K test set
(5,000 x 25,000 scores) never holds more than ``max_bytes`` (200 MB) of scores, masks and
order-measure temporaries at once. The float64 path converts the inputs to float64 on top
of that (the 5K captions at D=1024 are 200 MB, a peak of about 370 MB there); the default,
mixed precision for cosine, keeps float32 input as it is and scores in blocks of 8 MB.

Layout: ``images`` [N, D] holds each image ONCE (the original repeats each 5 times) and
``captions`` [5N, D] gives image i the rows 5i..5i+4. ``scores[i, j] = sim(image i,
caption j)``, in float64 like the original (its embedding arrays are float64).

Ranks are 0-based positions in the ranking ``numpy.argsort(d)[::-1]`` of the original,
with one thing pinned down that it left to an unstable sort: ties. We rank as a STABLE
ascending sort reversed would, i.e. among equal scores the HIGHER index comes first, so

    position(j) = #{k : d[k] > d[j]} + #{k : d[k] == d[j] and k > j}.

- i2t rank of image i: the best (smallest) position among its five captions in the
  ranking of all 5N captions by ``scores[i, :]``.
- t2i rank of caption j: the position of image ``j // 5`` in the ranking of all N images
  by ``scores[:, j]``.

The guarantee, for cosine: the ranks are those of the EXACT scores of the given vectors
(real dot products, no rounding), ties broken by the rule above, on every CPU and in both
paths. Rounded float64 scores alone cannot give that: their last bits depend on the BLAS
kernel's summation order (OpenBLAS sums differently with AVX-512 than with AVX2), and even on
a row's place in the kernel's tiles, so two exact copies of a vector can score an ulp apart.
So wherever two of a query's float64 scores are closer than float64's error bound
(gamma_D * ||q|| * max ||k||, doubled), the pair is decided by `vsepp.exact`, which computes
the sign of their exact difference. Order scores are elementwise numpy sums, the same on
every CPU, and are ranked as computed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any, Literal, TypedDict

import numpy as np
import numpy.typing as npt

from vsepp.exact import ranked_before

logger = logging.getLogger(__name__)

Measure = Literal["cosine", "order"]
MEASURES: tuple[str, ...] = ("cosine", "order")
CAPTIONS_PER_IMAGE = 5
NUM_FOLDS = 5
RECALL_AT = (1, 5, 10)
DEFAULT_MAX_BYTES = 200 * 2**20

_SCORE_BYTES = np.dtype(np.float64).itemsize
# A chunk of scores costs its float64 values plus two boolean masks (`>` and `==`) and
# headroom for the tie mask; half the budget goes to them, half to order_sim's temporary.
_BYTES_PER_SCORE = _SCORE_BYTES + 4

ArrayLike = npt.ArrayLike
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


class RecallMetrics(TypedDict):
    """One retrieval direction: recalls in percent, ranks 1-based as in the paper."""

    r1: float
    r5: float
    r10: float
    medr: float
    meanr: float


def _check_measure(measure: str) -> None:
    if measure not in MEASURES:
        raise ValueError(f"unknown measure {measure!r}; expected one of {MEASURES}")


def _validate(
    images: ArrayLike, captions: ArrayLike, measure: str, *, keep_float32: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Both embedding matrices as float64 (as float32 if both are and ``keep_float32``: the
    mixed path needs no float64 copy of them), after checking the 5-captions layout."""
    _check_measure(measure)
    ims, caps = np.asarray(images), np.asarray(captions)
    if not (keep_float32 and ims.dtype == caps.dtype == np.float32):
        ims, caps = np.asarray(ims, dtype=np.float64), np.asarray(caps, dtype=np.float64)
    if ims.ndim != 2 or caps.ndim != 2:
        raise ValueError(
            f"images and captions must be 2-D [N, D] and [5N, D], got shapes "
            f"{ims.shape} and {caps.shape}"
        )
    if ims.shape[0] == 0:
        raise ValueError("no images to evaluate: images has 0 rows")
    if caps.shape[0] != CAPTIONS_PER_IMAGE * ims.shape[0]:
        raise ValueError(
            f"expected {CAPTIONS_PER_IMAGE} captions per image: {ims.shape[0]} images need "
            f"{CAPTIONS_PER_IMAGE * ims.shape[0]} caption rows (image i owns rows 5i..5i+4), "
            f"got {caps.shape[0]}"
        )
    if ims.shape[1] != caps.shape[1]:
        raise ValueError(
            f"embedding sizes differ: images have D={ims.shape[1]}, captions D={caps.shape[1]}"
        )
    for name, arr in (("images", ims), ("captions", caps)):
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} contain NaN or infinite values")
    return ims, caps


def _chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, size):
        yield start, min(start + size, total)


def _rows_per_chunk(n_columns: int, max_bytes: int) -> int:
    return max(1, (max_bytes // 2) // (n_columns * _BYTES_PER_SCORE))


def order_sim(im: ArrayLike, s: ArrayLike, *, max_bytes: int = DEFAULT_MAX_BYTES) -> FloatArray:
    """Order-embedding scores [n_im, n_s]: ``-||max(0, s_j - im_i)||_2``, as the original.

    The [n_im, n_s, D] difference tensor is built in blocks of at most ``max_bytes / 2``.
    """
    im = np.asarray(im, dtype=np.float64)
    s = np.asarray(s, dtype=np.float64)
    out = np.empty((im.shape[0], s.shape[0]), dtype=np.float64)
    budget = max(1, max_bytes // 2)
    pair_bytes = max(1, im.shape[1]) * _SCORE_BYTES
    im_block = max(1, min(im.shape[0], budget // pair_bytes))
    s_block = max(1, min(s.shape[0], budget // (pair_bytes * im_block)))
    for a, b in _chunks(im.shape[0], im_block):
        for c, d in _chunks(s.shape[0], s_block):
            diff = s[np.newaxis, c:d, :] - im[a:b, np.newaxis, :]
            np.maximum(diff, 0.0, out=diff)
            np.square(diff, out=diff)
            # Always a sum over the contiguous last axis, so each score is bit-for-bit the
            # same whatever the blocking (numpy's pairwise sum per row).
            out[a:b, c:d] = -np.sqrt(diff.sum(axis=-1))
    return out


def _scores(queries: FloatArray, keys: FloatArray, measure: str, max_bytes: int) -> FloatArray:
    """Scores of ``queries`` (rows) against ``keys`` (columns); images first for order."""
    if measure == "order":
        return order_sim(queries, keys, max_bytes=max_bytes)
    return queries @ keys.T


def _caption_scores(
    captions: FloatArray, images: FloatArray, measure: str, max_bytes: int
) -> FloatArray:
    """Scores [n_captions, n_images] (``scores.T``); order is asymmetric, so keep roles."""
    if measure == "order":
        return order_sim(images, captions, max_bytes=max_bytes).T
    return captions @ images.T


class _Near:
    """What decides the keys a float64 score cannot: per query row, a bound on the
    difference of two of its float64 scores' errors, and the exact judge of a pair."""

    def __init__(self, queries: np.ndarray, keys: np.ndarray, bound: FloatArray) -> None:
        self.queries, self.keys, self.bound = queries, keys, bound

    def rows(self, first: int, last: int) -> _Near:
        """The same for query rows ``first..last-1`` numbered from 0."""
        return _Near(self.queries[first:last], self.keys, self.bound[first:last])

    def before(self, query: IntArray, key: IntArray, positive: IntArray) -> BoolArray:
        """Whether ``key`` ranks before ``positive`` for ``query`` (exact scores, tie rule)."""
        return ranked_before(self.queries, self.keys, query, key, positive)


def _near(queries: np.ndarray, keys: np.ndarray) -> _Near:
    """The float64 error bound of scores ``queries @ keys.T``, and the exact judge."""
    q_norm, k_norm = _norms(queries), _norms(keys)
    return _Near(queries, keys, _float64_bound(queries.shape[1]) * q_norm * float(k_norm.max()))


def _norms(x: np.ndarray) -> FloatArray:
    """Row norms in float64, in chunks (a float32 input is not copied whole)."""
    out = np.empty(x.shape[0])
    for a, b in _chunks(x.shape[0], max(1, 2**22 // max(1, x.shape[1]))):
        rows = np.asarray(x[a:b], dtype=np.float64)
        out[a:b] = np.sqrt(_dot_rows(rows, rows))
    return out


def _positions(scores: FloatArray, true_index: IntArray, near: _Near | None = None) -> IntArray:
    """0-based position of ``scores[r, true_index[r]]`` in row r's ranking (ties: higher first).

    With ``near`` (cosine), keys whose score is within the bound of the positive's are ranked
    by their exact scores; without it (order scores, made the same way on every CPU), equal
    scores are the ties.
    """
    rows = np.arange(scores.shape[0])
    true = scores[rows, true_index][:, np.newaxis]
    bound = near.bound[:, np.newaxis] if near is not None else 0.0
    hi, lo = true + bound, true - bound
    position = np.count_nonzero(scores > hi, axis=1).astype(np.int64)
    # The positive itself is in its own band; only rows with another key there (duplicate
    # vectors, near ties: rare in real embeddings) pay for the pairs.
    band = np.count_nonzero(scores >= lo, axis=1) - position
    busy = np.flatnonzero(band > 1)
    if busy.size:
        sub = scores[busy]
        r, key = np.nonzero((sub >= lo[busy]) & (sub <= hi[busy]))
        query = busy[r]
        positive = true_index[query]
        other = key != positive
        query, key, positive = query[other], key[other], positive[other]
        before = near.before(query, key, positive) if near is not None else key > positive
        position += np.bincount(query[before], minlength=scores.shape[0])
    return position


def _best_of_five(own: FloatArray, first_image: int, near: _Near | None) -> IntArray:
    """Which of each image's five captions (0..4) ranks first: the highest score, the higher
    index on a tie; with ``near``, by exact scores among those within the bound of the top."""
    # argmax over the reversed block finds the higher index on an exact tie (argmax returns
    # the first maximum).
    best = CAPTIONS_PER_IMAGE - 1 - np.argmax(own[:, ::-1], axis=1)
    if near is None:
        return best
    rows = np.arange(own.shape[0])
    close = own >= (own[rows, best] - near.bound)[:, np.newaxis]
    for r in np.flatnonzero(np.count_nonzero(close, axis=1) > 1):
        caption = (first_image + r) * CAPTIONS_PER_IMAGE
        winner = int(best[r])
        for c in np.flatnonzero(close[r]):
            pair = np.array([r]), np.array([caption + c]), np.array([caption + winner])
            if c != winner and near.before(*pair)[0]:
                winner = int(c)
        best[r] = winner
    return best


def _i2t_positions(scores: FloatArray, first_image: int, near: _Near | None = None) -> IntArray:
    """i2t ranks of images ``first_image..`` from their score rows against all captions."""
    images = first_image + np.arange(scores.shape[0])
    owned = images[:, np.newaxis] * CAPTIONS_PER_IMAGE + np.arange(CAPTIONS_PER_IMAGE)
    own_scores = np.take_along_axis(scores, owned, axis=1)
    # The smallest of the five positions is the position of the caption ranked first.
    best = _best_of_five(own_scores, first_image, near)
    return _positions(scores, owned[np.arange(len(images)), best], near)


def _i2t(images: FloatArray, captions: FloatArray, measure: str, max_bytes: int) -> IntArray:
    ranks = np.empty(images.shape[0], dtype=np.int64)
    rows = _rows_per_chunk(captions.shape[0], max_bytes)
    near = _near(images, captions) if measure == "cosine" else None
    for start, stop in _chunks(images.shape[0], rows):
        scores = _scores(images[start:stop], captions, measure, max_bytes)
        chunk = near.rows(start, stop) if near is not None else None
        ranks[start:stop] = _i2t_positions(scores, start, chunk)
    return ranks


def _t2i(images: FloatArray, captions: FloatArray, measure: str, max_bytes: int) -> IntArray:
    ranks = np.empty(captions.shape[0], dtype=np.int64)
    rows = _rows_per_chunk(images.shape[0], max_bytes)
    near = _near(captions, images) if measure == "cosine" else None
    for start, stop in _chunks(captions.shape[0], rows):
        scores = _caption_scores(captions[start:stop], images, measure, max_bytes)
        owners = np.arange(start, stop, dtype=np.int64) // CAPTIONS_PER_IMAGE
        chunk = near.rows(start, stop) if near is not None else None
        ranks[start:stop] = _positions(scores, owners, chunk)
    return ranks


def _both_ranks(
    images: FloatArray, captions: FloatArray, measure: str, max_bytes: int
) -> tuple[IntArray, IntArray]:
    """(i2t, t2i) ranks; one score matrix serves both when it fits in the budget."""
    n_images, n_captions = images.shape[0], captions.shape[0]
    if n_images * n_captions * _BYTES_PER_SCORE <= max_bytes // 2:
        scores = _scores(images, captions, measure, max_bytes)
        owners = np.arange(n_captions, dtype=np.int64) // CAPTIONS_PER_IMAGE
        if measure != "cosine":
            return _i2t_positions(scores, 0), _positions(scores.T, owners)
        i2t_near, t2i_near = _near(images, captions), _near(captions, images)
        return _i2t_positions(scores, 0, i2t_near), _positions(scores.T, owners, t2i_near)
    logger.debug("score matrix %dx%d over budget: chunking", n_images, n_captions)
    return _i2t(images, captions, measure, max_bytes), _t2i(images, captions, measure, max_bytes)


# Unit roundoff of float32 and float64.
_U32 = float(np.finfo(np.float32).eps) / 2
_U64 = float(np.finfo(np.float64).eps) / 2
Precision = Literal["auto", "mixed", "float64"]
PRECISIONS: tuple[str, ...] = ("auto", "mixed", "float64")


def _gamma(n: int, u: float) -> float:
    """Higham's gamma_n = n u / (1 - n u): the relative error bound of an n-term dot product."""
    return n * u / (1 - n * u)


def _float32_bound(dim: int) -> float:
    """c such that |float32 score - exact score| <= c * ||q|| * ||k|| for float64 inputs.

    Rounding each input to float32 moves a product by at most (2u + u^2)|q_d k_d|; the float32
    dot product of D terms in any summation order adds gamma_D(1 + u)^2 sum |q_d k_d|; the
    float64 scores it is compared with carry gamma_D in float64. sum |q_d k_d| <= ||q|| ||k||
    (Cauchy-Schwarz). Doubled for safety: the bound only decides what gets re-scored.
    """
    c = 2 * _U32 + _U32**2 + _gamma(dim, _U32) * (1 + _U32) ** 2 + 2 * _gamma(dim + 2, _U64)
    return 2.0 * c


def _float64_bound(dim: int) -> float:
    """c such that two float64 scores of a query, each made in any summation order (any BLAS
    kernel, FMA or not), have a difference within c * ||q|| * max ||k|| of the exact one:
    gamma_D * ||q|| * ||k|| each (Cauchy-Schwarz, as above). Doubled for safety: the bound
    only decides what is compared exactly."""
    return 2.0 * 2 * _gamma(dim, _U64)


def _outward(true_score: FloatArray, bound: FloatArray) -> tuple[np.ndarray, np.ndarray]:
    """float32 thresholds (lo, hi) just outside true_score -/+ bound: a float32 score above
    hi is certainly above the float64 true score, one below lo certainly below."""
    hi = np.nextafter((true_score + bound).astype(np.float32), np.float32(np.inf))
    lo = np.nextafter((true_score - bound).astype(np.float32), np.float32(-np.inf))
    return lo, hi


# Scores per block of the mixed path: 8 MB of float32, so that the comparisons and counts
# that follow the product read it from the last-level cache (32 MB here), not from memory,
# in few enough BLAS calls (under load, many small ones cost more than the cache saves).
_BLOCK_SCORES = 2**21
# Masks are counted eight bytes at a time, as uint64 words whose byte lanes add up to 255.
_LANE_MAX = 255
_LANES = 8
# Columns per block: a row's mask is at most 255 words, so its lanes cannot overflow.
_BLOCK_COLUMNS = _LANE_MAX * _LANES


def _rows64(x: np.ndarray, index: IntArray) -> FloatArray:
    """Rows ``x[index]`` as a contiguous float64 array (a float32 row converts exactly)."""
    return np.asarray(x[index], dtype=np.float64)


def _dot_rows(a: FloatArray, b: FloatArray) -> FloatArray:
    """float64 row-by-row dot products: how every float64 score of the mixed path is made."""
    return np.einsum("ij,ij->i", a, b)


def _own_scores_and_norms(
    images: np.ndarray, captions: np.ndarray, max_bytes: int
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """float64 scores [N, 5] of each image with its five captions, and the rows' norms.

    Image i's captions are the rows 5i..5i+4, so the pairs are consecutive rows of an image
    block repeated 5 times and the caption block: no gather, and one product serves i2t (the
    best of the five) and t2i (each caption with its image).
    """
    n, dim = images.shape
    own = np.empty((n, CAPTIONS_PER_IMAGE))
    im_norm, cap_norm = np.empty(n), np.empty(n * CAPTIONS_PER_IMAGE)
    # float64 copies of the image block (twice: as is and repeated) and of its captions.
    per_image = (1 + 2 * CAPTIONS_PER_IMAGE) * dim * _SCORE_BYTES
    for a, b in _chunks(n, max(1, (max_bytes // 2) // per_image)):
        im = np.asarray(images[a:b], dtype=np.float64)
        cap = np.asarray(captions[a * CAPTIONS_PER_IMAGE : b * CAPTIONS_PER_IMAGE], np.float64)
        pairs = _dot_rows(np.repeat(im, CAPTIONS_PER_IMAGE, axis=0), cap)
        own[a:b] = pairs.reshape(b - a, CAPTIONS_PER_IMAGE)
        im_norm[a:b] = np.sqrt(_dot_rows(im, im))
        cap_norm[a * CAPTIONS_PER_IMAGE : b * CAPTIONS_PER_IMAGE] = np.sqrt(_dot_rows(cap, cap))
    return own, im_norm, cap_norm


class _Direction:
    """One retrieval direction of the mixed path: for each query its positive's float64
    score and key, float32 thresholds around it, what decides float64 near ties, and the
    position counted so far."""

    def __init__(
        self, true_key: IntArray, true_score: FloatArray, bound: FloatArray, near: _Near
    ) -> None:
        self.key, self.score, self.near = true_key, true_score, near
        self.lo, self.hi = _outward(true_score, bound)
        self.position = np.zeros(true_key.size, dtype=np.int64)


def _row_counts(mask: np.ndarray) -> IntArray:
    """True values per row of a C-contiguous bool [r, 8w] mask, w <= 255.

    Its rows as uint64 words summed: each byte lane counts the True bytes (0 or 1) of its
    position in every word, at most w <= 255, so no carry crosses lanes. Several times
    faster than ``count_nonzero(axis=1)``, which casts every bool to an integer.
    """
    lanes = np.add.reduce(mask.view(np.uint64), axis=1)
    return lanes.view(np.uint8).reshape(-1, _LANES).sum(axis=1, dtype=np.int64)


def _column_counts(mask: np.ndarray) -> IntArray:
    """True values per column of a C-contiguous bool [r, 8w] mask: words summed down 255
    rows at a time (each byte lane is then one column's count, at most 255)."""
    words = mask.view(np.uint64)
    total = np.zeros(mask.shape[1], dtype=np.int64)
    for a, b in _chunks(mask.shape[0], _LANE_MAX):
        total += np.add.reduce(words[a:b], axis=0).view(np.uint8)
    return total


def _count_block(
    scores: np.ndarray,
    d: _Direction,
    axis: int,
    queries: slice,
    keys: slice,
    mask: np.ndarray,
    rescore: Callable[[IntArray, IntArray], FloatArray],
) -> None:
    """Add one block's keys ranked before each query's positive to ``d.position``.

    ``scores`` [images, captions] of float32, the queries along ``axis`` (0: i2t, 1: t2i);
    ``mask`` a bool buffer of the block's shape with its width rounded up to 8 (and False
    there). Keys above the positive's float64 score by more than float32's error bound
    count, keys below by more do not; the rest (the band, the positive among them) are
    told apart by float64 re-scores, and only for the queries whose band in this block
    holds a key besides the positive: usually none.
    """
    expand = (slice(None), np.newaxis) if axis == 0 else (np.newaxis, slice(None))
    lo, hi = d.lo[queries][expand], d.hi[queries][expand]
    count = _row_counts if axis == 0 else _column_counts
    block = mask[:, : scores.shape[1]]
    np.greater(scores, hi, out=block)
    above = count(mask)[: scores.shape[axis]]
    np.greater_equal(scores, lo, out=block)
    band = count(mask)[: scores.shape[axis]] - above
    d.position[queries] += above

    by_query = scores if axis == 0 else scores.T  # [queries, keys] views
    true_key = d.key[queries]
    local = true_key - keys.start
    here = np.flatnonzero((local >= 0) & (local < by_query.shape[1]))
    own = by_query[here, local[here]]
    lo_q, hi_q = d.lo[queries], d.hi[queries]
    if not np.all((own >= lo_q[here]) & (own <= hi_q[here])):
        # The bound guarantees it; without it the counts below would be off by one.
        raise RuntimeError("a float32 score is outside its error bound: mixed precision is unsound")
    band[here] -= 1
    busy = np.flatnonzero(band > 0)
    if not busy.size:
        return
    sub = by_query[busy]
    rows, cols = np.nonzero((sub >= lo_q[busy, np.newaxis]) & (sub <= hi_q[busy, np.newaxis]))
    query = busy[rows]
    key = keys.start + cols
    others = key != true_key[query]  # the positive itself ranks after itself
    query, key = query[others], key[others]
    rescored = rescore(queries.start + query, key)
    t, j = d.score[queries][query], true_key[query]
    bound = d.near.bound[queries][query]
    before = rescored > t + bound
    # Within float64's own error of the positive: the exact scores decide.
    near = np.flatnonzero(~before & (rescored >= t - bound))
    before[near] = d.near.before(queries.start + query[near], key[near], j[near])
    d.position[queries] += np.bincount(query[before], minlength=band.size)


def _both_ranks_mixed(
    images: np.ndarray, captions: np.ndarray, max_bytes: int
) -> tuple[IntArray, IntArray]:
    """(i2t, t2i) cosine ranks: float32 scoring, float64 re-scoring of what it cannot tell.

    ``images`` and ``captions`` are float32 or float64. One float32 product, in blocks, serves
    both directions: per query, keys whose float32 score is above the positive's float64 score
    by more than float32's error bound count as ranked before it, keys below by more as after;
    only the keys within the bound are re-scored in float64, one dot product each, and
    compared with the tie rule. So every position equals the float64 one. Positions add up
    over the blocks of each row (i2t) and column (t2i).
    """
    n, n_caps = images.shape[0], captions.shape[0]
    own, im_norm, cap_norm = _own_scores_and_norms(images, captions, max_bytes)
    c, c64 = _float32_bound(images.shape[1]), _float64_bound(images.shape[1])
    i2t_near = _Near(images, captions, c64 * im_norm * float(np.max(cap_norm)))
    t2i_near = _Near(captions, images, c64 * cap_norm * float(np.max(im_norm)))
    # The image's caption that ranks first (see _i2t_positions).
    best = _best_of_five(own, 0, i2t_near)
    i2t = _Direction(
        np.arange(n) * CAPTIONS_PER_IMAGE + best,
        own[np.arange(n), best],
        c * im_norm * float(np.max(cap_norm)),
        i2t_near,
    )
    t2i = _Direction(
        np.arange(n_caps, dtype=np.int64) // CAPTIONS_PER_IMAGE,
        own.reshape(-1),
        c * cap_norm * float(np.max(im_norm)),
        t2i_near,
    )
    im32 = np.asarray(images, dtype=np.float32)
    cap32 = np.asarray(captions, dtype=np.float32)

    def i2t_rescore(image: IntArray, caption: IntArray) -> FloatArray:
        return _dot_rows(_rows64(images, image), _rows64(captions, caption))

    def t2i_rescore(caption: IntArray, image: IntArray) -> FloatArray:
        return _dot_rows(_rows64(images, image), _rows64(captions, caption))

    # A block's float32 scores and one mask (the band's few re-scores aside).
    budget = max(1, (max_bytes // 2) // 8)
    cols = max(1, min(n_caps, _BLOCK_COLUMNS, budget))
    rows = max(1, min(n, min(budget, _BLOCK_SCORES) // cols))
    width = -(-cols // _LANES) * _LANES
    mask = np.zeros((rows, width), dtype=bool)
    for a, b in _chunks(n, rows):
        for k, e in _chunks(n_caps, cols):
            scores = im32[a:b] @ cap32[k:e].T
            block_mask = mask[: b - a]
            block_mask[:, e - k :] = False  # the padding of a narrower last block
            images_, captions_ = slice(a, b), slice(k, e)
            _count_block(scores, i2t, 0, images_, captions_, block_mask, i2t_rescore)
            _count_block(scores, t2i, 1, captions_, images_, block_mask, t2i_rescore)
    return i2t.position, t2i.position


def i2t_ranks(
    images: ArrayLike,
    captions: ArrayLike,
    measure: Measure = "cosine",
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> IntArray:
    """Image->text ranks [N]: best 0-based position of an image's own captions."""
    ims, caps = _validate(images, captions, measure)
    return _i2t(ims, caps, measure, max_bytes)


def t2i_ranks(
    images: ArrayLike,
    captions: ArrayLike,
    measure: Measure = "cosine",
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> IntArray:
    """Text->image ranks [5N]: 0-based position of caption j's image ``j // 5``."""
    ims, caps = _validate(images, captions, measure)
    return _t2i(ims, caps, measure, max_bytes)


def both_ranks(
    images: ArrayLike,
    captions: ArrayLike,
    measure: Measure = "cosine",
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    precision: Precision = "auto",
) -> tuple[IntArray, IntArray]:
    """(i2t [N], t2i [5N]) ranks as `evaluate` computes them (see its `precision`)."""
    ims, caps = _validate(images, captions, measure, keep_float32=True)
    return _ranks(ims, caps, measure, max_bytes, precision)


def _ranks(
    ims: np.ndarray, caps: np.ndarray, measure: str, max_bytes: int, precision: str
) -> tuple[IntArray, IntArray]:
    """both_ranks on validated arrays (float32 or float64)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    # Mixed precision is faster than the float64 path at 1K and 5K alike
    # (benchmarks/README.md), so "auto" takes it for cosine; order scores are float64.
    if measure == "cosine" and precision in ("auto", "mixed"):
        return _both_ranks_mixed(ims, caps, max_bytes)
    ims, caps = np.asarray(ims, dtype=np.float64), np.asarray(caps, dtype=np.float64)
    return _both_ranks(ims, caps, measure, max_bytes)


def recalls_at(ranks: np.ndarray) -> dict[str, float]:
    """R@1/5/10: percent of the 0-based `ranks` below K, as {"r1", "r5", "r10"}. The one
    formula of R@K here and in `index.retrieval_metrics` (ranks known only within a top-k too)."""
    # 100.0 * count / n, in the original's order, so the floats match it bit for bit.
    return {f"r{k}": float(100.0 * np.count_nonzero(ranks < k) / ranks.size) for k in RECALL_AT}


def recall_metrics(ranks: ArrayLike) -> RecallMetrics:
    """R@1/5/10 (percent of ranks < K), ``medr = floor(median) + 1``, ``meanr = mean + 1``."""
    ranks = np.asarray(ranks)
    if ranks.ndim != 1 or ranks.size == 0:
        raise ValueError(f"ranks must be a non-empty 1-D array, got shape {ranks.shape}")
    r = recalls_at(ranks)
    return RecallMetrics(
        r1=r["r1"],
        r5=r["r5"],
        r10=r["r10"],
        medr=float(np.floor(np.median(ranks)) + 1),
        meanr=float(ranks.mean() + 1),
    )


def _metrics(i2t: IntArray, t2i: IntArray) -> dict[str, Any]:
    r, ri = recall_metrics(i2t), recall_metrics(t2i)
    rsum = r["r1"] + r["r5"] + r["r10"] + ri["r1"] + ri["r5"] + ri["r10"]
    return {"i2t": r, "t2i": ri, "rsum": float(rsum), "n_images": int(i2t.size)}


def _mean_metrics(folds: list[dict[str, Any]]) -> dict[str, Any]:
    """Average of per-fold metrics, every entry (medr and meanr too), as the original."""

    def mean_of(direction: str) -> RecallMetrics:
        def avg(key: str) -> float:
            return float(np.mean([f[direction][key] for f in folds]))

        return RecallMetrics(
            r1=avg("r1"), r5=avg("r5"), r10=avg("r10"), medr=avg("medr"), meanr=avg("meanr")
        )

    return {
        "i2t": mean_of("i2t"),
        "t2i": mean_of("t2i"),
        "rsum": float(np.mean([f["rsum"] for f in folds])),
        "n_images": folds[0]["n_images"],
    }


def evaluate(
    images: ArrayLike,
    captions: ArrayLike,
    *,
    measure: Measure = "cosine",
    fold5: bool = False,
    max_bytes: int = DEFAULT_MAX_BYTES,
    precision: Precision = "auto",
) -> dict[str, Any]:
    """Both directions on the whole set: ``{"i2t", "t2i", "rsum", "n_images"}``.

    With ``precision="mixed"`` cosine ranks are scored in float32 and re-scored in float64
    only where float32's error bound cannot separate a key from the query's positive, with
    one float32 product for both directions; ``precision="float64"`` scores everything in
    float64, the original's arithmetic. ``"auto"`` (the default) is mixed for cosine and
    float64 for order. Both give exactly the ranks of the exact scores (the module's
    docstring): a key within float64's own error bound of the positive (duplicates, ties
    under 1e-15) is ranked by its exact score, so the ranks do not depend on the CPU, its
    BLAS kernel or the blocking, and the two paths always agree.

    With ``fold5`` (COCO's protocol; needs N divisible by 5) it adds ``"folds"``, the five
    consecutive N/5-image folds (1K each on the 5K test set) each evaluated on its own, and
    ``"mean_of_folds"``, their average; the top-level entries stay the full-set numbers.
    """
    ims, caps = _validate(images, captions, measure, keep_float32=True)
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")

    def both(im: np.ndarray, cap: np.ndarray) -> tuple[IntArray, IntArray]:
        return _ranks(im, cap, measure, max_bytes, precision)

    result = _metrics(*both(ims, caps))
    if fold5:
        n = ims.shape[0]
        if n % NUM_FOLDS:
            raise ValueError(f"fold5 needs a number of images divisible by 5, got {n}")
        size = n // NUM_FOLDS
        cap_size = size * CAPTIONS_PER_IMAGE
        folds = [
            _metrics(*both(ims[k * size : (k + 1) * size], caps[k * cap_size : (k + 1) * cap_size]))
            for k in range(NUM_FOLDS)
        ]
        result["folds"] = folds
        result["mean_of_folds"] = _mean_metrics(folds)
    return result


def _format_block(title: str, metrics: dict[str, Any]) -> list[str]:
    lines = [
        f"{title} ({metrics['n_images']} images, "
        f"{metrics['n_images'] * CAPTIONS_PER_IMAGE} captions)",
        f"{'':<15}{'R@1':>6}{'R@5':>7}{'R@10':>7}{'Med r':>8}{'Mean r':>8}",
    ]
    for label, key in (("Image to text", "i2t"), ("Text to image", "t2i")):
        m = metrics[key]
        lines.append(
            f"{label:<15}{m['r1']:>6.1f}{m['r5']:>7.1f}{m['r10']:>7.1f}"
            f"{m['medr']:>8.1f}{m['meanr']:>8.1f}"
        )
    lines.append(f"rsum: {metrics['rsum']:.1f}")
    return lines


def format_metrics(metrics: dict[str, Any]) -> str:
    """The paper's table: R@1 R@5 R@10 Med r Mean r per direction, then rsum."""
    if "mean_of_folds" in metrics:
        lines = [
            *_format_block("Mean of 5 folds", metrics["mean_of_folds"]),
            "",
            *_format_block("Full set", metrics),
        ]
    else:
        lines = _format_block("Split", metrics)
    return "\n".join(lines)
