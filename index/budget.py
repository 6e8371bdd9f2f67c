"""A memory budget picks the index, as autofaiss does: exact while it fits, then HNSW,
then IVF with an HNSW coarse quantizer and compressed codes in on-disk inverted lists.

`choose_index(n, d, budget)` estimates, for each candidate, the memory the index needs at
serving time (everything a search touches resident: vectors or codes, ids, graph links,
quantizer) and the build's own working memory (the index being built plus one chunk of
vectors, the training sample, the held-out queries), and returns the best candidate whose
larger figure fits. The candidates, best first:

1. ``flat``: n·d·4 bytes; exact. Only up to `AUTO_FLAT_MAX` vectors, as ``auto`` does:
   beyond, a scan of every vector is too slow per query (~25 ms at 100k on 2 cores), and
   flat always needs less memory than HNSW, so a budget alone would never move past it.
2. ``hnsw`` (M=32): the vectors plus ~2.1·M neighbour links of 4 bytes per vector.
3. ``ivf_hnsw_ondisk`` with the largest code that fits, ``SQ8`` (d bytes a vector, recall
   close to exact), then ``PQ{d/4}x8``, ``PQ{d/8}x8``, ``PQ{d/16}x8``, ``PQ{d/32}x8``: IVF
   lists of codes + 8-byte ids, served memory-mapped from ``SIDE.ivfdata``, with
   ``nlist`` lists found by an HNSW32 graph over their centroids.

PQ with 8-bit codes over 32-dimensional (or coarser) sub-vectors loses most of recall@10 on
1024-d embeddings, so the order prefers the large codes; smaller ones are what a tight
budget gets, with its measured recall in the manifest. A budget below the smallest
candidate raises `BudgetTooSmallError`, which names the smallest budget that works.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from index.faiss_index import AUTO_FLAT_MAX

HNSW_M = 32  # links per node of the HNSW index and of the IVF coarse quantizer
ID_BYTES = 8  # an inverted-list entry's id (int64)
# The most lists k-means trains on 2 shared cores in minutes (its cost grows with
# nlist^2: 4,096 lists on 164k points, 10 iterations, is ~14 TFLOP).
MAX_NLIST = 4096
MIN_LIST_POINTS = 39  # FAISS's minimum training points per centroid
TRAIN_POINTS_PER_LIST = 40
# Fixed overhead of a Python process with FAISS and numpy loaded, counted in every build.
BASE_BYTES = 200 * 2**20
FLUSH_BYTES = 1 << 30  # codes an in-memory IVF part of the build holds before it is written
_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


class BudgetTooSmallError(ValueError):
    """No index fits the memory budget; the message names the smallest that works."""


def parse_size(text: str) -> int:
    """Bytes in a size such as ``4G``, ``500M``, ``1.5GB``, ``2GiB``, ``1024`` (powers of 1024)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(I?B)?\s*", text.upper())
    if not m or (m.group(3) and not m.group(2) and m.group(3) == "IB"):
        raise ValueError(f"{text!r}: expected a size such as 4G, 500M, 1.5GB or 1024 (bytes)")
    value = float(m.group(1)) * _UNITS[m.group(2)]
    if value < 1:
        raise ValueError(f"{text!r}: a memory budget must be at least 1 byte")
    return int(value)


def format_size(n: float) -> str:
    """`n` bytes in the largest unit that keeps one decimal (``4.0G``, ``512.0M``)."""
    for unit in ("T", "G", "M", "K"):
        if n >= _UNITS[unit]:
            return f"{math.ceil(n / _UNITS[unit] * 10) / 10:.1f}{unit}"
    return f"{int(n)}B"


def ivf_nlist(n: int) -> int:
    """Lists of an on-disk IVF: a power of two near 4·sqrt(n), with at least 39 vectors per
    list, at most `MAX_NLIST` (k-means on more would take hours on this kind of machine)."""
    target = min(4 * math.sqrt(n), n / MIN_LIST_POINTS, MAX_NLIST)
    return max(1, 2 ** math.floor(math.log2(max(target, 1))))


def code_choices(d: int) -> list[tuple[str, int, int]]:
    """(code, m, nbits) of the on-disk IVF, best first: SQ8, then PQ with m | d, 8 bits."""
    out: list[tuple[str, int, int]] = [("SQ8", d, 8)]
    for div in (4, 8, 16, 32):
        m = d // div
        if m >= 1 and d % m == 0 and (not out or m != out[-1][1]):
            out.append((f"PQ{m}x8", m, 8))
    return out


def code_bytes(code: str, d: int, m: int, nbits: int) -> int:
    """Bytes per vector of a code."""
    return d if code == "SQ8" else math.ceil(m * nbits / 8)


def hnsw_link_bytes(n: int, m: int = HNSW_M) -> int:
    """FAISS HNSW links: 2·M on level 0, M on each upper level (a node reaches level l with
    probability M^-l), 4 bytes each, plus a level byte-count and an 8-byte offset per node."""
    per_node = 2 * m + m / (m - 1)
    return int(n * (per_node * 4 + 4 + 8))


@dataclass(frozen=True)
class Choice:
    """An index type with the parameters the budget allows and its memory estimates."""

    index_type: str  # flat | hnsw | ivf_hnsw_ondisk
    params: dict[str, Any] = field(default_factory=dict)
    serving_bytes: int = 0  # resident while searching at full speed
    build_bytes: int = 0  # peak working memory of the build
    factory: str = "Flat"

    @property
    def needs(self) -> int:
        """The budget this choice needs (the larger of serving and build)."""
        return max(self.serving_bytes, self.build_bytes)

    def facts(self, budget: int | None) -> dict[str, Any]:
        """What the manifest records of the estimate."""
        return {
            "max_index_memory": budget,
            "estimated_serving_bytes": self.serving_bytes,
            "estimated_build_bytes": self.build_bytes,
        }


def candidates(
    n: int, d: int, *, chunk_rows: int, recall_queries: int = 1000, hnsw_m: int = HNSW_M
) -> list[Choice]:
    """Every candidate for `n` vectors of dimension `d`, best first, with its estimates.

    `chunk_rows`: the largest block of vectors the build holds at once (a shard).
    """
    chunk_rows = min(chunk_rows, n)
    chunk = chunk_rows * d * 4
    # Held-out queries for tuning and recall (two sets) with their running exact top-10.
    queries = 2 * recall_queries * (d * 4 + 10 * 12)
    flat = n * d * 4
    out = []
    if n <= AUTO_FLAT_MAX:
        out.append(Choice("flat", {}, flat, BASE_BYTES + flat + chunk + queries, "Flat"))
    hnsw = flat + hnsw_link_bytes(n, hnsw_m)
    out.append(
        Choice("hnsw", {"M": hnsw_m}, hnsw, BASE_BYTES + hnsw + chunk + queries, f"HNSW{hnsw_m}")
    )
    nlist = ivf_nlist(n)
    quantizer = nlist * d * 4 + hnsw_link_bytes(nlist)
    train = min(n, TRAIN_POINTS_PER_LIST * nlist) * d * 4
    # k-means keeps, besides the sample, its assignment and distance per point and the
    # centroids twice (the previous iteration's and the new ones).
    kmeans = min(n, TRAIN_POINTS_PER_LIST * nlist) * 16 + 2 * nlist * d * 4
    for code, m, nbits in code_choices(d):
        per_vector = code_bytes(code, d, m, nbits) + ID_BYTES
        # PQ: 2^nbits centroids per sub-quantizer (d floats in all); SQ8: a min and a range
        # per dimension.
        tables = d * 2**nbits * 4 if code != "SQ8" else 2 * d * 4
        lists = n * per_vector
        serving = quantizer + tables + lists + nlist * 24  # + per-list size/capacity/offset
        # Build: the sample and k-means, then (not at the same time) one chunk and the
        # in-memory IVF part it goes to, written to disk at FLUSH_BYTES of codes; its lists
        # grow by doubling, so up to twice that is allocated (at 1M x SQ8 the first
        # estimate without the doubling was 1.65 GiB, the measured anonymous peak 2.29
        # GiB). The merge writes through a mapping of the .ivfdata file (page cache,
        # written back by the kernel: file-backed, not counted here).
        adding = chunk + 2 * min(n * per_vector, FLUSH_BYTES) + chunk_rows * per_vector
        build = BASE_BYTES + quantizer + tables + queries + max(train + kmeans, adding)
        factory = f"IVF{nlist}_HNSW{HNSW_M},{code if code == 'SQ8' else f'PQ{m}x{nbits}'}"
        out.append(
            Choice(
                "ivf_hnsw_ondisk",
                {"nlist": nlist, "code": code, "m": m, "nbits": nbits},
                serving,
                build,
                factory,
            )
        )
    return out


def choose_index(
    n: int, d: int, budget: int, *, chunk_rows: int, recall_queries: int = 1000
) -> Choice:
    """The best candidate whose serving and build memory both fit `budget` bytes."""
    options = candidates(n, d, chunk_rows=chunk_rows, recall_queries=recall_queries)
    for c in options:
        if c.needs <= budget:
            return c
    smallest = min(c.needs for c in options)
    best = min(options, key=lambda c: c.needs)
    raise BudgetTooSmallError(
        f"--max_index_memory {format_size(budget)} is too small for {n:,} vectors of dim {d}: "
        f"the smallest index ({best.factory}) needs {format_size(smallest)} "
        f"({smallest:,} bytes); give at least that"
    )


EMPTY = Choice("flat", {}, 0, 0, "Flat")  # a side with no vectors


def choose_pair(
    n_images: int,
    n_captions: int,
    d: int,
    budget: int,
    *,
    chunk_rows: int,
    recall_queries: int = 1000,
) -> tuple[Choice, Choice]:
    """The images' and the captions' index under one budget: both are served together
    (their serving memory adds up), built one after the other (the larger build counts).
    The images get the better index when both cannot have the best."""

    def options(n: int) -> list[Choice]:
        if n == 0:
            return [EMPTY]
        return candidates(n, d, chunk_rows=chunk_rows, recall_queries=recall_queries)

    def needs(a: Choice, b: Choice) -> int:
        return max(a.serving_bytes + b.serving_bytes, a.build_bytes, b.build_bytes, 1)

    pairs = [(a, b) for a in options(n_images) for b in options(n_captions)]
    for a, b in pairs:
        if needs(a, b) <= budget:
            return a, b
    a, b = min(pairs, key=lambda ab: needs(*ab))
    smallest = needs(a, b)
    raise BudgetTooSmallError(
        f"--max_index_memory {format_size(budget)} is too small for {n_images:,} image and "
        f"{n_captions:,} caption vectors of dim {d}: the smallest indexes ({a.factory} and "
        f"{b.factory}) need {format_size(smallest)} ({smallest:,} bytes); give at least that"
    )
