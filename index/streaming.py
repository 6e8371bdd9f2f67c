"""Indexes built from vectors streamed chunk by chunk, never all in memory at once.

A `VectorSource` yields the rows of one side (images or captions) in order, as float32
chunks; it can be read several times (shards on disk, a generator run again from its
seed, an array). `build_streaming(source, choice, scratch)` builds the index a
`budget.Choice` names:

- ``flat`` / ``hnsw``: the chunks are added one by one to the in-memory index (it fits
  the budget by construction).
- ``ivf_hnsw_ondisk``: pass 1 draws a seeded training sample across all chunks and the
  rows the held-out queries come from; the coarse quantizer (k-means, then an HNSW graph
  over the centroids) and the codes (SQ8 or PQ) are trained on the sample; pass 2 adds the
  chunks to in-memory IVF parts written to `scratch` every `flush_rows` rows, and the
  parts' inverted lists are merged into one ``.ivfdata`` file as faiss'
  ``contrib.ondisk.merge_ondisk`` does (`OnDiskInvertedLists.merge_from_multiple`).

Pass 2 (the only pass of flat / HNSW) also keeps the exact top-10 of two query sets over
the chunks seen so far, so recall against exact search needs no extra pass: one set tunes
``nprobe`` / ``efSearch`` to ``target_recall``, the other, held out from the tuning, gives
the recall@10 the manifest records.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import faiss
import numpy as np

from index.budget import FLUSH_BYTES, TRAIN_POINTS_PER_LIST, Choice, choose_pair
from index.faiss_index import (
    DEFAULT_EF_CONSTRUCTION,
    MAX_EF_SEARCH,
    RECALL_NOISE,
    TUNE_QUERIES,
    neighbour_recall,
    quantizer_ef,
    set_search_param,
    tune_with_truth,
)
from index.store import IndexPart

log = logging.getLogger(__name__)

K = 10


class VectorSource(Protocol):
    """Rows 0..n-1 of one side, in order, in chunks; iterable more than once."""

    @property
    def n(self) -> int:
        """Number of rows."""
        ...

    @property
    def d(self) -> int:
        """Dimension."""
        ...

    def chunks(self) -> Iterator[np.ndarray]:
        """float32 [m, d] blocks whose concatenation is rows 0..n-1."""
        ...


@dataclass
class ArraySource:
    """An in-memory array as a source (a dataset split, the tests)."""

    array: np.ndarray
    chunk_rows: int = 65536

    @property
    def n(self) -> int:
        return int(self.array.shape[0])

    @property
    def d(self) -> int:
        return int(self.array.shape[1])

    def chunks(self) -> Iterator[np.ndarray]:
        for start in range(0, self.n, self.chunk_rows):
            yield np.ascontiguousarray(self.array[start : start + self.chunk_rows], np.float32)


@dataclass
class ChunkSource:
    """Chunks from a callable that can be called again (shards, a seeded generator)."""

    n: int
    d: int
    make_chunks: Callable[[], Iterator[np.ndarray]]

    def chunks(self) -> Iterator[np.ndarray]:
        seen = 0
        for chunk in self.make_chunks():
            x = np.ascontiguousarray(chunk, dtype=np.float32)
            if x.ndim != 2 or x.shape[1] != self.d:
                raise ValueError(f"chunk at row {seen}: shape {x.shape}, expected [m, {self.d}]")
            seen += len(x)
            yield x
        if seen != self.n:
            raise ValueError(f"the source gave {seen} rows, expected {self.n}")


class RunningTopK:
    """The exact top-k (inner product) of fixed queries over chunks seen one at a time."""

    def __init__(self, queries: np.ndarray, k: int = K) -> None:
        self.queries = np.ascontiguousarray(queries, dtype=np.float32)
        self.k = k
        nq = len(queries)
        self.scores = np.full((nq, k), -np.inf, np.float32)
        self.rows = np.full((nq, k), -1, np.int64)

    def add(self, chunk: np.ndarray, start: int) -> None:
        """Merge the top-k of `chunk` (rows start..start+len-1) into the running top-k."""
        if not len(self.queries) or not len(chunk):
            return
        kk = min(self.k, len(chunk))
        s, r = faiss.knn(self.queries, chunk, kk, metric=faiss.METRIC_INNER_PRODUCT)
        scores = np.concatenate([self.scores, s], axis=1)
        rows = np.concatenate([self.rows, r + start], axis=1)
        # Stable on the old entries first: ties keep the lower row, like one exact search.
        order = np.argsort(-scores, axis=1, kind="stable")[:, : self.k]
        self.scores = np.take_along_axis(scores, order, axis=1)
        self.rows = np.take_along_axis(rows, order, axis=1)


def _noisy(base: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    """`index.faiss_index.sample_queries`' queries: row + Gaussian noise of norm noise·|row|."""
    g = rng.standard_normal(base.shape).astype(np.float32)
    g *= (noise * np.linalg.norm(base, axis=1, keepdims=True)) / np.maximum(
        np.linalg.norm(g, axis=1, keepdims=True), 1e-12
    )
    return np.ascontiguousarray(base + g)


def _gather(source: VectorSource, wanted: list[np.ndarray]) -> list[np.ndarray]:
    """The rows `wanted[i]` (sorted row numbers) of `source`, in one pass."""
    out = [np.empty((len(w), source.d), np.float32) for w in wanted]
    start = 0
    for chunk in source.chunks():
        stop = start + len(chunk)
        for rows, dest in zip(wanted, out, strict=True):
            lo, hi = np.searchsorted(rows, [start, stop])
            dest[lo:hi] = chunk[rows[lo:hi] - start]
        start = stop
    return out


def _query_rows(n: int, count: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, size=min(count, n), replace=False))


def _factory(choice: Choice) -> str:
    p = choice.params
    code = "SQ8" if p["code"] == "SQ8" else f"PQ{p['m']}x{p['nbits']}np"
    return f"IVF{p['nlist']}_HNSW32,{code}"


def _train_ivf(choice: Choice, sample: np.ndarray, d: int, seed: int, niter: int) -> faiss.Index:
    index = faiss.index_factory(d, _factory(choice), faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.seed = seed
    ivf.cp.niter = niter
    if choice.params["code"] != "SQ8":
        pq: Any = faiss.downcast_index(ivf)
        pq.pq.cp.seed = seed
        pq.pq.cp.niter = niter
    t0 = time.perf_counter()
    index.train(sample)
    log.info(
        "%s: trained on %d vectors in %.1fs", choice.factory, len(sample), time.perf_counter() - t0
    )
    return index


def _merge_parts(index: faiss.Index, parts: list[Path], ivfdata: Path) -> None:
    """`contrib.ondisk.merge_ondisk`: the parts' lists (memory-mapped) into `ivfdata`."""
    ivf = faiss.extract_index_ivf(index)
    readers = [faiss.read_index(str(p), faiss.IO_FLAG_MMAP) for p in parts]
    swig: Any = faiss  # the SWIG helpers have no type stubs
    lists = swig.InvertedListsPtrVector()
    for r in readers:
        lists.push_back(faiss.extract_index_ivf(r).invlists)
    ondisk: Any = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(ivfdata))
    ntotal = ondisk.merge_from_multiple(lists.data(), lists.size(), False)
    index.ntotal = ivf.ntotal = ntotal
    ivf.replace_invlists(ondisk, True)
    ondisk.this.disown()  # owned by the index now
    del lists, readers


@dataclass
class Streamed:
    """What `build_streaming` made."""

    index: faiss.Index
    facts: dict[str, Any]  # the manifest section (index_type, params, recall_at_10, ...)
    ivfdata: Path | None  # the on-disk lists the index maps (on-disk types)
    eval_queries: np.ndarray  # the held-out queries of recall_at_10
    eval_truth: np.ndarray  # their exact top-10 rows


def build_streaming(
    source: VectorSource,
    choice: Choice,
    scratch: Path,
    *,
    side: str = "images",
    seed: int = 0,
    recall_queries: int = 1000,
    target_recall: float = 0.95,
    niter: int = 10,
    flush_bytes: int = FLUSH_BYTES,
    nprobe: int = 0,
) -> Streamed:
    """Build `choice` over `source`.

    The .ivfdata file (on-disk types) is ``scratch/SIDE.ivfdata``; the index maps it, and
    `index.store.write_index_dir` moves it into the index directory. `nprobe` > 0 fixes
    nprobe instead of tuning it.
    """
    n, d = source.n, source.d
    t_start = time.perf_counter()
    facts: dict[str, Any] = {}
    p = dict(choice.params)
    tune_rows = _query_rows(n, TUNE_QUERIES, seed + 1)
    eval_rows = _query_rows(n, recall_queries, seed + 2)
    ondisk = choice.index_type == "ivf_hnsw_ondisk"
    sample_rows = np.zeros(0, np.int64)
    if ondisk:
        want = max(TRAIN_POINTS_PER_LIST * int(p["nlist"]), 39 * 2 ** int(p["nbits"]))
        sample_rows = _query_rows(n, want, seed)
    t0 = time.perf_counter()
    sample, tune_base, eval_base = _gather(source, [sample_rows, tune_rows, eval_rows])
    facts["sample_seconds"] = round(time.perf_counter() - t0, 1)
    rng = np.random.default_rng(seed + 3)
    tune_q, eval_q = _noisy(tune_base, rng, RECALL_NOISE), _noisy(eval_base, rng, RECALL_NOISE)
    truth_tune, truth_eval = RunningTopK(tune_q), RunningTopK(eval_q)
    ivfdata: Path | None = None
    if ondisk:
        p["train_size"] = len(sample)
        t0 = time.perf_counter()
        index = _train_ivf(choice, sample, d, seed, niter)
        facts["train_seconds"] = round(time.perf_counter() - t0, 1)
        del sample
        ivfdata = scratch / f"{side}.ivfdata"
        index = _add_ondisk(index, source, scratch, side, ivfdata, flush_bytes,
                            (truth_tune, truth_eval))  # fmt: skip
    else:
        index = faiss.IndexFlatIP(d) if choice.index_type == "flat" else _empty_hnsw(d, p, seed)
        start = 0
        for chunk in source.chunks():
            index.add(chunk)
            for t in (truth_tune, truth_eval):
                t.add(chunk, start)
            start += len(chunk)
    facts["add_seconds"] = round(time.perf_counter() - t_start, 1)
    k = min(K, n)
    if choice.index_type == "flat":
        recall = 1.0
    else:
        name = "nprobe" if ondisk else "efSearch"
        fixed = nprobe if ondisk else int(p.get("efSearch", 0))
        if fixed:
            set_search_param(index, name, fixed)
            p[name] = fixed
        else:
            top = int(p["nlist"]) if ondisk else MAX_EF_SEARCH
            p[name], facts["tuned_recall_at_10"] = tune_with_truth(
                index, tune_q, truth_tune.rows[:, :k], name, target_recall, max_value=top
            )
        if ondisk:
            p["quantizer_efSearch"] = quantizer_ef(int(p["nprobe"]))
        _, found = index.search(eval_q, k)
        recall = neighbour_recall(found, truth_eval.rows[:, :k])
    p["seed"] = seed
    facts.update(
        {
            "index_type": choice.index_type,
            "params": p,
            "factory": choice.factory,
            "faiss_class": type(faiss.downcast_index(index)).__name__,
            "count": n,
            "dim": d,
            "metric": "inner_product",
            "exact": choice.index_type == "flat",
            "ondisk": ondisk,
            "build_seconds": round(time.perf_counter() - t_start, 1),
            "recall_at_10": round(recall, 4),
            "recall_queries": len(eval_q),
        }
    )
    log.info("%s over %d x %d: recall@10 %.3f in %.0fs", choice.factory, n, d, recall,
             facts["build_seconds"])  # fmt: skip
    return Streamed(index, facts, ivfdata, eval_q, truth_eval.rows[:, :k])


def _empty_hnsw(d: int, p: dict[str, Any], seed: int) -> faiss.Index:
    hnsw: Any = faiss.IndexHNSWFlat(d, int(p["M"]), faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = int(p.get("efConstruction") or DEFAULT_EF_CONSTRUCTION)
    hnsw.hnsw.rng = faiss.RandomGenerator(seed)  # type: ignore[attr-defined]
    return hnsw


def _add_ondisk(
    index: faiss.Index,
    source: VectorSource,
    scratch: Path,
    side: str,
    ivfdata: Path,
    flush_bytes: int,
    truths: tuple[RunningTopK, ...],
) -> faiss.Index:
    """Pass 2: add chunk by chunk to IVF parts on disk, then merge them into `ivfdata`."""
    ivf = faiss.extract_index_ivf(index)
    # The HNSW quantizer assigns each vector to its list with efSearch 16 (FAISS's
    # default): at 1024-d, 64 made the add pass 3-4x slower (it visits about as many
    # centroids as a flat scan of 2,048), for a list that is rarely better.
    quantizer: Any = faiss.downcast_index(ivf.quantizer)
    quantizer.hnsw.efSearch = 16
    flush_rows = max(1, flush_bytes // (int(ivf.code_size) + 8))
    parts: list[Path] = []
    part = faiss.clone_index(index)
    start = 0
    t0 = time.perf_counter()
    for chunk in source.chunks():
        for lo in range(0, len(chunk), flush_rows):
            piece = chunk[lo : lo + flush_rows]
            ids = np.arange(start + lo, start + lo + len(piece), dtype=np.int64)
            part.add_with_ids(piece, ids)
            if part.ntotal >= flush_rows:
                parts.append(_write_part(part, scratch, side, len(parts)))
                part = faiss.clone_index(index)
        for t in truths:
            t.add(chunk, start)
        start += len(chunk)
        log.info("%s: added %d of %d vectors (%.0fs)", side, start, source.n,
                 time.perf_counter() - t0)  # fmt: skip
    if part.ntotal or not parts:
        parts.append(_write_part(part, scratch, side, len(parts)))
    del part
    _merge_parts(index, parts, ivfdata)
    for path in parts:
        path.unlink()
    return index


def _write_part(part: faiss.Index, scratch: Path, side: str, number: int) -> Path:
    path = scratch / f"{side}.part-{number:05d}.faiss"
    faiss.write_index(part, str(path))
    return path


def budgeted_parts(
    sources: dict[str, VectorSource],
    budget: int,
    scratch: Path,
    *,
    chunk_rows: int,
    seed: int = 0,
    recall_queries: int = 1000,
    target_recall: float = 0.95,
) -> dict[str, IndexPart]:
    """Both sides' indexes chosen by `budget.choose_pair` and built by `build_streaming`;
    the parts for `index.store.write_index_dir` (BudgetTooSmallError before any work)."""
    images, captions = sources["images"], sources["captions"]
    choices = dict(
        zip(
            ("images", "captions"),
            choose_pair(
                images.n,
                captions.n,
                images.d,
                budget,
                chunk_rows=chunk_rows,
                recall_queries=recall_queries,
            ),
            strict=True,
        )
    )
    parts = {}
    for side, source in sources.items():
        choice = choices[side]
        log.info("%s: %d vectors, budget %d bytes: %s (serving ~%d, build ~%d bytes)", side,
                 source.n, budget, choice.factory, choice.serving_bytes,
                 choice.build_bytes)  # fmt: skip
        if source.n == 0:
            parts[side] = IndexPart.empty(source.d, **choice.facts(budget))
            continue
        built = build_streaming(source, choice, scratch, side=side, seed=seed,
                                recall_queries=recall_queries,
                                target_recall=target_recall)  # fmt: skip
        facts = {**built.facts, **choice.facts(budget), "requested_type": "budget"}
        parts[side] = IndexPart(built.index, facts, None, built.ivfdata)
    return parts
