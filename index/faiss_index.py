"""FAISS indexes of unit vectors: build one, tune it, and measure its recall against exact search.

Everything here is model-free: vectors in, a `faiss.Index` and a dict of facts out. The
metric is always inner product (cosine similarity on L2-normalised vectors).

Index types (`build_index(vectors, index_type, **params)`):

- ``flat``: `IndexFlatIP`, exact. No parameters.
- ``hnsw``: `IndexHNSWFlat` (``M``, ``efConstruction``, ``efSearch``).
- ``ivf``: `IndexIVFFlat` (``nlist`` ~ 4 sqrt(n), ``nprobe``, k-means ``niter``, ``train_size``).
- ``ivfpq``: `IndexIVFPQ` (``m`` sub-quantizers of ``nbits``), wrapped in `IndexRefineFlat`
  when ``k_factor`` > 0 so the top ``k * k_factor`` PQ candidates are re-ranked with the
  exact vectors (PQ alone on 1024-d vectors loses too much recall).
- ``auto``: ``flat`` up to `AUTO_FLAT_MAX` vectors, ``hnsw`` above.

``efSearch`` / ``nprobe`` = 0 means "tune" (`tune_with_truth`): doubling from 16 (efSearch)
or 1 (nprobe), the first value whose recall@10 on a tuning query sample reaches
``target_recall``; it stops earlier, keeping the value before, when a doubling gains less
than `PLATEAU` of recall, and at the cap (`MAX_EF_SEARCH` / ``nlist``). A warning says when
the target was not reached and why; the recall reached is recorded either way.

Determinism: k-means (IVF, PQ) and the training sample use ``seed``, so IVF / IVF-PQ builds
are reproducible. HNSW levels come from an RNG seeded with ``seed``, but a multi-threaded
HNSW build links nodes in a thread-dependent order: its graph is reproducible only when
built on one FAISS thread.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

import faiss
import numpy as np

log = logging.getLogger(__name__)

INDEX_TYPES: tuple[str, ...] = ("flat", "hnsw", "ivf", "ivfpq")
# IVF with an HNSW coarse quantizer, SQ8 or PQ codes in on-disk inverted lists: built from
# streamed chunks by `index.streaming` (chosen by a memory budget, `index.budget`).
ONDISK_TYPE = "ivf_hnsw_ondisk"
AUTO_FLAT_MAX = 50_000  # `auto` builds an exact index up to this many vectors
# HNSW's efConstruction when none is given (0 means the same): every HNSW build uses it.
DEFAULT_EF_CONSTRUCTION = 80
# k-means wants this many training points per centroid; FAISS warns below 39.
MIN_POINTS_PER_CENTROID = 39

# Parameters per type and their defaults; 0 means "choose from the data" (see module doc).
DEFAULT_PARAMS: dict[str, dict[str, int | float]] = {
    "flat": {},
    "hnsw": {
        "M": 32,
        "efConstruction": DEFAULT_EF_CONSTRUCTION,
        "efSearch": 0,
        "target_recall": 0.95,
    },
    "ivf": {"nlist": 0, "nprobe": 0, "niter": 10, "train_size": 0, "target_recall": 0.95},
    "ivfpq": {
        "nlist": 0,
        "nprobe": 0,
        "m": 64,
        "nbits": 8,
        "k_factor": 32,
        "niter": 10,
        "train_size": 0,
        "target_recall": 0.95,
    },
}
MAX_EF_SEARCH = 2048  # tuning stops here: beyond it HNSW is slower than a flat scan
TUNE_QUERIES = 300  # queries used to tune efSearch / nprobe
# A doubling of efSearch / nprobe (about twice the search's cost) that gains less recall@10
# than half a point ends the tuning: the codes bound recall then, not the search breadth
# (at 10M SQ8 vectors nprobe 4 -> 256 gained 0.932 -> 0.952 for ~60x the cost).
PLATEAU = 0.005
RECALL_NOISE = 0.5  # query = data point + noise of this relative norm (cos ~ 0.89)
# A vector whose norm is further than this from 1 is normalised again (and logged).
NORM_TOLERANCE = 1e-3


def _check_vectors(vectors: np.ndarray, what: str = "vectors") -> np.ndarray:
    """`vectors` as a C-contiguous float32 [n, d] array with n >= 1, or a clear error."""
    arr = np.asarray(vectors)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{what}: expected a non-empty 2-D array [n, d], got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{what}: expected floating point values, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        bad = int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
        raise ValueError(f"{what}: row {bad} has NaN or infinite values")
    return arr


def normalize(vectors: np.ndarray, what: str) -> np.ndarray:
    """Rows scaled to unit length, so inner products are cosines (a no-op for the encoders'
    normalised output; logged when it is not). Zero rows are an error."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D array [n, d], got shape {x.shape}")
    if not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
        raise ValueError(f"{what}: row {bad} has NaN or infinite values")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"{what}: row {int(np.flatnonzero(norms == 0)[0])} is all zeros")
    off = int((np.abs(norms - 1) > NORM_TOLERANCE).sum())
    if off:
        log.warning("%s: %d of %d vectors were not unit length; normalised them", what, off, len(x))
        x = x / norms
    return x


def resolve_type(index_type: str, n: int) -> str:
    """The concrete type `index_type` names for `n` vectors (`auto` -> flat or hnsw)."""
    if index_type == "auto":
        return "flat" if n <= AUTO_FLAT_MAX else "hnsw"
    if index_type not in INDEX_TYPES:
        raise ValueError(f"index_type={index_type!r}: expected auto or one of {INDEX_TYPES}")
    return index_type


def _resolve_params(
    index_type: str, requested: str, params: dict[str, Any]
) -> dict[str, int | float]:
    """Defaults of `index_type` overridden by `params`; unknown names are an error."""
    defaults = DEFAULT_PARAMS[index_type]
    allowed = set(defaults)
    if requested == "auto":
        # With `auto`, parameters for the type that was not chosen are simply not used.
        known = set(DEFAULT_PARAMS["hnsw"])
        unknown = sorted(set(params) - known)
        dropped = sorted(set(params) & (known - allowed))
        if dropped:
            log.info("auto chose %s: ignoring parameters %s", index_type, dropped)
        params = {k: v for k, v in params.items() if k in allowed}
    else:
        unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {unknown} for index type {requested!r}; "
            f"expected some of {sorted(allowed) or 'none'}"
        )
    out: dict[str, int | float] = dict(defaults)
    for key, value in params.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"parameter {key}={value!r}: expected a number")
        if value < 0:
            raise ValueError(f"parameter {key}={value!r}: must be >= 0")
        out[key] = type(defaults[key])(value)
    return out


def default_nlist(n: int) -> int:
    """~4 sqrt(n) lists, but never fewer than 39 training points per list."""
    return max(1, min(round(4 * math.sqrt(n)), n // MIN_POINTS_PER_CENTROID))


def _training_sample(vectors: np.ndarray, size: int, seed: int) -> np.ndarray:
    """A seeded subset of `size` rows (all rows if there are not more)."""
    n = vectors.shape[0]
    if size >= n:
        return vectors
    rows = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
    return np.ascontiguousarray(vectors[rows])


def _build_ivf(
    vectors: np.ndarray, index_type: str, p: dict[str, int | float], seed: int
) -> tuple[faiss.Index, str]:
    n, d = vectors.shape
    nlist = int(p["nlist"]) or default_nlist(n)
    if nlist > n:
        raise ValueError(f"nlist={nlist} is larger than the number of vectors ({n})")
    p["nlist"] = nlist
    if index_type == "ivf":
        factory = f"IVF{nlist},Flat"
        min_train = nlist
    else:
        m, nbits = int(p["m"]), int(p["nbits"])
        if m < 1 or d % m:
            raise ValueError(f"ivfpq: m={m} must divide the dimension {d}")
        if not 1 <= nbits <= 16:
            raise ValueError(f"ivfpq: nbits={nbits} must be in 1..16")
        # "np": no polysemous training, which the search never uses and which takes
        # minutes on 1024-d codes (50x the rest of the training).
        factory = f"IVF{nlist},PQ{m}x{nbits}np" + (",RFlat" if p["k_factor"] > 0 else "")
        # Each PQ sub-quantizer runs k-means with 2**nbits centroids on the training set.
        min_train = max(nlist, MIN_POINTS_PER_CENTROID * 2**nbits)
    if n < min_train:
        raise ValueError(
            f"{index_type} with {factory} needs at least {min_train} vectors to train, got {n}; "
            "use index_type='flat' (exact) for so few vectors"
        )
    # 40 points per list: above FAISS's minimum of 39, and k-means cost is linear in it
    # (1M vectors: 4,000 lists, 160k training points, ~2 min on 2 cores).
    train_size = int(p["train_size"]) or max(min_train, 40 * nlist)
    p["train_size"] = min(train_size, n)
    index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.seed = seed
    ivf.cp.niter = int(p["niter"])
    if index_type == "ivfpq":
        pq_index: Any = faiss.downcast_index(ivf)
        pq_index.pq.cp.seed = seed
        pq_index.pq.cp.niter = int(p["niter"])
    t0 = time.perf_counter()
    index.train(_training_sample(vectors, int(p["train_size"]), seed))
    seconds = time.perf_counter() - t0
    log.info("%s: trained on %d vectors in %.1fs", factory, p["train_size"], seconds)
    index.add(vectors)
    if index_type == "ivfpq" and p["k_factor"] > 0:
        set_search_param(index, "k_factor", p["k_factor"])
    return index, factory


def build_index(
    vectors: np.ndarray, index_type: str = "auto", *, seed: int = 0, **params: Any
) -> tuple[faiss.Index, dict[str, Any]]:
    """Build a FAISS inner-product index of `vectors` [n, d] (rows = ids 0..n-1).

    Returns the index and a dict of facts: ``index_type`` (the concrete type),
    ``requested_type``, ``params`` (every parameter, auto values filled in), ``factory``,
    ``faiss_class``, ``count``, ``dim``, ``metric``, ``exact`` and ``build_seconds`` (and
    ``tuned_recall_at_10`` when a search parameter was tuned).
    """
    x = _check_vectors(vectors)
    n, d = x.shape
    concrete = resolve_type(index_type, n)
    p = _resolve_params(concrete, index_type, params)
    t0 = time.perf_counter()
    info: dict[str, Any] = {}
    if concrete == "flat":
        index: faiss.Index = faiss.IndexFlatIP(d)
        factory = "Flat"
        index.add(x)
    elif concrete == "hnsw":
        m = int(p["M"])
        if m < 2:
            raise ValueError(f"hnsw: M={m} must be at least 2")
        factory = f"HNSW{m}"
        hnsw: Any = faiss.IndexHNSWFlat(d, m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = int(p["efConstruction"]) or DEFAULT_EF_CONSTRUCTION
        # Seeds the random level of each node (the graph itself also depends on threads).
        hnsw.hnsw.rng = faiss.RandomGenerator(seed)  # type: ignore[attr-defined]
        hnsw.add(x)
        index = hnsw
        if p["efSearch"]:
            set_search_param(index, "efSearch", p["efSearch"])
        else:
            p["efSearch"], info["tuned_recall_at_10"] = tune_search(
                index, x, "efSearch", float(p["target_recall"]), seed=seed
            )
    else:
        index, factory = _build_ivf(x, concrete, p, seed)
        nlist = int(p["nlist"])
        if p["nprobe"]:
            set_search_param(index, "nprobe", min(int(p["nprobe"]), nlist))
        else:
            p["nprobe"], info["tuned_recall_at_10"] = tune_search(
                index, x, "nprobe", float(p["target_recall"]), seed=seed, max_value=nlist
            )
    p["seed"] = seed
    info.update(
        {
            "index_type": concrete,
            "requested_type": index_type,
            "params": p,
            "factory": factory,
            "faiss_class": type(faiss.downcast_index(index)).__name__,
            "count": n,
            "dim": d,
            "metric": "inner_product",
            "exact": concrete == "flat",
            "build_seconds": round(time.perf_counter() - t0, 3),
        }
    )
    log.info("built %s over %d x %d in %.1fs", factory, n, d, info["build_seconds"])
    return index, info


def set_search_param(index: faiss.Index, name: str, value: int | float) -> None:
    """Set ``efSearch``, ``nprobe`` or ``k_factor`` on `index` (or the index it wraps)."""
    idx: Any = faiss.downcast_index(index)
    if name == "efSearch":
        idx.hnsw.efSearch = int(value)
    elif name == "nprobe":
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = int(value)
        quantizer: Any = faiss.downcast_index(ivf.quantizer)
        if isinstance(quantizer, faiss.IndexHNSW):
            # An HNSW coarse quantizer must find `nprobe` good lists, not just the best.
            quantizer.hnsw.efSearch = quantizer_ef(int(value))
    elif name == "k_factor":
        idx.k_factor = float(value)
    else:
        raise ValueError(f"unknown search parameter {name!r}")


def quantizer_ef(nprobe: int) -> int:
    """efSearch of an HNSW coarse quantizer asked for `nprobe` lists."""
    return max(64, 2 * nprobe)


def apply_search_params(index: faiss.Index, index_type: str, params: dict[str, Any]) -> None:
    """Re-apply the search-time parameters a manifest recorded (after reading an index)."""
    if index_type == "hnsw" and params.get("efSearch"):
        set_search_param(index, "efSearch", params["efSearch"])
    if index_type in ("ivf", "ivfpq", ONDISK_TYPE) and params.get("nprobe"):
        set_search_param(index, "nprobe", params["nprobe"])
    if index_type == "ivfpq" and params.get("k_factor"):
        set_search_param(index, "k_factor", params["k_factor"])


def sample_queries(
    vectors: np.ndarray, n_queries: int, *, seed: int = 0, noise: float = RECALL_NOISE
) -> np.ndarray:
    """`n_queries` seeded queries near the data: row + Gaussian noise of norm `noise`·|row|.

    Rows are drawn without replacement; with ``noise=0.5`` a query has cosine ~0.89 with the
    row it came from, so its exact neighbours are a real neighbourhood, not just that row.
    """
    x = np.asarray(vectors)
    n = x.shape[0]
    rng = np.random.default_rng(seed)
    rows = rng.choice(n, size=min(n_queries, n), replace=False)
    base = np.asarray(x[np.sort(rows)], dtype=np.float32)
    g = rng.standard_normal(base.shape).astype(np.float32)
    g *= (noise * np.linalg.norm(base, axis=1, keepdims=True)) / np.maximum(
        np.linalg.norm(g, axis=1, keepdims=True), 1e-12
    )
    return np.ascontiguousarray(base + g)


def exact_search(queries: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force inner-product top-k: (scores float32 [nq, k], rows int64 [nq, k])."""
    k = min(k, len(vectors))
    scores, rows = faiss.knn(
        np.ascontiguousarray(queries, dtype=np.float32),
        np.ascontiguousarray(vectors, dtype=np.float32),
        k,
        metric=faiss.METRIC_INNER_PRODUCT,
    )
    return scores, rows


def neighbour_recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Nearest-neighbour recall@k of an approximate search: the mean over queries of
    |found ∩ truth| / k (rows of -1 never count). Not the VSE++ R@K (`index.retrieval_metrics`)."""
    k = truth.shape[1]
    hits = sum(
        len(np.intersect1d(f[f >= 0], t[t >= 0], assume_unique=True))
        for f, t in zip(found, truth, strict=True)
    )
    return float(hits) / (k * len(truth))


def measure_recall(
    index: faiss.Index,
    vectors: np.ndarray,
    k: int = 10,
    n_queries: int = 1000,
    seed: int = 0,
    *,
    noise: float = RECALL_NOISE,
) -> float:
    """Recall@k of `index` against exact search over `vectors` (the rows it holds).

    Queries come from `sample_queries` (data rows plus noise, seeded). An exact index
    scores 1.0 (up to ties).
    """
    x = _check_vectors(vectors)
    queries = sample_queries(x, n_queries, seed=seed, noise=noise)
    _, truth = exact_search(queries, x, k)
    _, found = index.search(queries, truth.shape[1])
    return neighbour_recall(found, truth)


def tune_search(
    index: faiss.Index,
    vectors: np.ndarray,
    name: str,
    target_recall: float,
    *,
    seed: int = 0,
    k: int = 10,
    n_queries: int = TUNE_QUERIES,
    max_value: int = MAX_EF_SEARCH,
) -> tuple[int, float]:
    """`tune_with_truth` for `name` (efSearch / nprobe) on queries drawn from `vectors` with
    ``seed + 1``, so that `measure_recall(seed=seed)` reports the recall on queries the
    tuning did not see."""
    queries = sample_queries(vectors, n_queries, seed=seed + 1)
    _, truth = exact_search(queries, vectors, k)
    return tune_with_truth(index, queries, truth, name, target_recall, max_value=max_value)


def tune_with_truth(
    index: faiss.Index,
    queries: np.ndarray,
    truth: np.ndarray,
    name: str,
    target_recall: float,
    *,
    max_value: int = MAX_EF_SEARCH,
) -> tuple[int, float]:
    """The value of `name` (efSearch from 16, nprobe from 1, doubling) at which the recall
    against `truth` (exact top-k rows of `queries`) first reaches `target_recall`.

    Stops early, keeping the value before, when a doubling gains less than PLATEAU (half a
    point) of recall: the curve has flattened (an IVF-PQ limited by its codes and k_factor,
    not by nprobe; or two points bought for many times the cost); and stops at `max_value`.
    Returns (value, recall at it).
    """
    k = truth.shape[1]
    value = 16 if name == "efSearch" else 1
    best: tuple[int, float] | None = None
    why = ""
    while True:
        value = min(value, max_value)
        set_search_param(index, name, value)
        _, found = index.search(queries, k)
        recall = neighbour_recall(found, truth)
        log.info("tuning %s=%d: recall@%d %.3f", name, value, k, recall)
        if best is not None and recall - best[1] < PLATEAU:
            value, recall = best
            set_search_param(index, name, value)
            why = "recall stopped improving"
            break
        best = (value, recall)
        if recall >= target_recall:
            break
        if value >= max_value:
            why = "the cap"
            break
        value *= 2
    if recall < target_recall:
        log.warning(
            "%s=%d reaches recall@%d %.3f < target %.2f (%s)",
            name,
            value,
            k,
            recall,
            target_recall,
            why,
        )
    return value, round(recall, 4)


def keeps_exact_vectors(index: faiss.Index) -> bool:
    """Whether `exact_vectors(index)` can give the vectors back (all but a bare IVF-PQ)."""
    idx = faiss.downcast_index(index)
    if isinstance(idx, faiss.IndexRefine):
        return keeps_exact_vectors(idx.refine_index)
    return isinstance(idx, faiss.IndexFlat | faiss.IndexHNSWFlat | faiss.IndexIVFFlat)


def exact_vectors(index: faiss.Index) -> np.ndarray | None:
    """The exact vectors an index holds, float32 [ntotal, d]; None if it only keeps codes.

    Flat, HNSW-Flat, IVF-Flat and refined IVF-PQ keep them; a bare IVF-PQ does not.
    """
    idx: Any = faiss.downcast_index(index)
    n = int(idx.ntotal)
    if isinstance(idx, faiss.IndexRefine):
        return exact_vectors(idx.refine_index)
    if not keeps_exact_vectors(idx):
        return None
    if n == 0:
        return np.zeros((0, idx.d), np.float32)
    if isinstance(idx, faiss.IndexIVF) and idx.direct_map.no():
        # Reconstruction by id needs the id -> (list, offset) map: build it for this call
        # only, so that it is neither kept in memory nor written with the index.
        idx.make_direct_map()
        try:
            return np.asarray(idx.reconstruct_n(0, n), dtype=np.float32)
        finally:
            idx.set_direct_map_type(faiss.DirectMap.NoMap)  # type: ignore[attr-defined]
    return np.asarray(idx.reconstruct_n(0, n), dtype=np.float32)


# A selection of at most this many rows is searched exactly: a product over the selected
# vectors (reconstructed by the index). An approximate index would find few of a few
# selected rows (an HNSW walk mostly meets unselected nodes), and even a flat index pays a
# bitmap test for every row it skips (at 1M rows and 0.1%, 4x the product).
EXACT_SELECTED_ROWS = 4096
_DIRECT_MAP = threading.Lock()
_FAISS: Any = faiss  # the search-parameter classes have no type stubs


def search_selected(
    index: faiss.Index,
    queries: np.ndarray,
    k: int,
    mask: np.ndarray,
    *,
    stored: np.ndarray | None = None,
    exact_rows: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The top k of `queries` (unit rows) among the rows where `mask` is True.

    FAISS itself skips the other rows during the search (an `IDSelectorBitmap` in the search
    parameters; never a wider search whose results are dropped), with efSearch / nprobe
    raised by twice the inverse of the selected fraction so that the selected neighbours are
    still reached. Few selected rows (<= `exact_rows`, default EXACT_SELECTED_ROWS) are
    scored exactly instead, over their vectors (`stored`, the exact vectors when the index
    keeps only codes, or reconstructed: an IVF gets its id map once). Returns (scores [n, k],
    rows [n, k]) like `index.search`, padded with -1.
    """
    n = int(index.ntotal)
    if mask.shape != (n,):
        raise ValueError(f"selection of shape {mask.shape} for an index of {n} rows")
    rows = np.flatnonzero(mask)
    k = min(k, len(rows))
    if k == 0:
        return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
    if len(rows) <= (EXACT_SELECTED_ROWS if exact_rows is None else exact_rows):
        vectors = stored[rows] if stored is not None else _reconstructed(index, rows)
        if vectors is not None:
            return _exact_top(queries, np.asarray(vectors, np.float32), rows, k)
    bits = np.packbits(mask, bitorder="little")
    selector = faiss.IDSelectorBitmap(n, faiss.swig_ptr(bits))
    # FAISS keeps raw pointers to the bitmap and the parameter objects: `alive` holds them
    # until the search is done.
    alive: list[Any] = [bits, selector]
    # Twice the inverse fraction: the unselected rows cost a bitmap test each, not a score.
    params = _selector_params(index, selector, 2 * n / len(rows), alive)
    scores, found = index.search(queries, k, params=params)
    del alive
    return np.asarray(scores, np.float32), np.asarray(found, np.int64)


def _exact_top(
    queries: np.ndarray, vectors: np.ndarray, rows: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The top k of each query over `vectors` (rows `rows` of the index), best first; ties
    go to the lower row, as a flat index orders them."""
    scores = queries @ vectors.T
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < len(rows) else None
    if top is None:
        top = np.broadcast_to(np.arange(len(rows)), scores.shape)
    picked = np.take_along_axis(scores, top, axis=1)
    order = np.lexsort((rows[top], -picked), axis=1)
    best = np.take_along_axis(top, order, axis=1)
    return np.take_along_axis(scores, best, axis=1).astype(np.float32), rows[best]


def _reconstructed(index: faiss.Index, rows: np.ndarray) -> np.ndarray | None:
    """The vectors of `rows` as the index holds them (exact, or decoded codes for an IVF
    with SQ/PQ codes); None where the index cannot give them back."""
    idx: Any = faiss.downcast_index(index)
    if isinstance(idx, faiss.IndexRefine):
        return _reconstructed(idx.refine_index, rows)
    if isinstance(idx, faiss.IndexIVF):
        with _DIRECT_MAP:
            if idx.direct_map.no():
                # Rows are added in order (ids 0..n-1), so the array map fits: 8 bytes a row,
                # made once; searches do not read it.
                idx.make_direct_map()
    elif not isinstance(idx, faiss.IndexFlat | faiss.IndexHNSW):
        return None
    return np.asarray(idx.reconstruct_batch(rows.astype(np.int64)), np.float32)


def _selector_params(
    index: faiss.Index, selector: Any, widen: float, alive: list[Any]
) -> faiss.SearchParameters:
    """Search parameters that apply `selector`, with the index's own breadth widened by
    `widen` (capped) so that a selected fraction of 1/widen is still searched well; every
    object made is appended to `alive`."""
    idx: Any = faiss.downcast_index(index)
    params: Any
    if isinstance(idx, faiss.IndexRefine):
        base = _selector_params(idx.base_index, selector, widen, alive)
        params = _FAISS.IndexRefineSearchParameters(k_factor=idx.k_factor, base_index_params=base)
    elif isinstance(idx, faiss.IndexHNSW):
        ef = math.ceil(idx.hnsw.efSearch * widen)
        params = _FAISS.SearchParametersHNSW(sel=selector, efSearch=min(MAX_EF_SEARCH, ef))
    elif isinstance(idx, faiss.IndexIVF):
        nprobe = min(int(idx.nlist), math.ceil(idx.nprobe * widen))
        params = _FAISS.SearchParametersIVF(sel=selector, nprobe=nprobe)
        quantizer: Any = faiss.downcast_index(idx.quantizer)
        if isinstance(quantizer, faiss.IndexHNSW):
            inner = _FAISS.SearchParametersHNSW(efSearch=quantizer_ef(nprobe))
            alive.append(inner)
            params.quantizer_params = inner
    else:
        params = _FAISS.SearchParameters(sel=selector)
    alive.append(params)
    return params
