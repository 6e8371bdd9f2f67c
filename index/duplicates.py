"""Near-duplicate images: groups of images whose vectors are closer than a threshold.

A burst of shots of one scene, an edited copy, a re-saved JPEG: different bytes (so not the
aliases of `index.shards`, which are byte copies) but nearly the same vector. `find_groups`
asks the built image index itself for every image's neighbours above the threshold (FAISS
range search, chunk by chunk: never an all-pairs product) and joins the pairs into groups;
a group is labelled by its first row, and an image in no group has -1. The index directory
keeps the labels (`index.store`, duplicates.npy) and the threshold (manifest), and a search
with ``collapse`` shows a group once, by its best-scoring member.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

import faiss
import numpy as np

log = logging.getLogger(__name__)

# Cosine at or above which two images are the same shot, recorded in every manifest that
# uses it. Chosen on measured bursts (benchmarks/bench_bursts.py, benchmarks/README.md: a
# shift, exposure +-6%, a JPEG re-compression, a 1-degree turn of 300 demo photos, with the
# demo model): 0.97 groups 95% of the shots with their photo and 7% of the photos with
# another (the demo's scenes repeat); 0.95 would group 99% and 20%.
DEFAULT_THRESHOLD = 0.97


def near_pairs(
    index: faiss.Index, chunks: Iterable[np.ndarray], threshold: float
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(rows, neighbours) arrays of the pairs of distinct rows with cosine >= `threshold`,
    querying `index` with its own vectors, given in order as `chunks`."""
    start = 0
    for chunk in chunks:
        x = np.ascontiguousarray(chunk, dtype=np.float32)
        # range_search keeps scores > radius: step just below the threshold.
        lims, _, found = index.range_search(x, float(np.nextafter(np.float32(threshold), -2)))
        rows = np.repeat(np.arange(start, start + len(x)), np.diff(lims.astype(np.int64)))
        keep = found != rows
        yield rows[keep], found[keep].astype(np.int64)
        start += len(x)


def label_groups(n: int, pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """int64 [n]: each row's group, labelled by its smallest row; -1 for a row alone."""
    parent = np.arange(n, dtype=np.int64)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    touched: set[int] = set()
    for rows, others in pairs:
        for a, b in zip(rows.tolist(), others.tolist(), strict=True):
            if a == b:
                continue  # a group's first with itself: alone unless another joins it
            touched.update((a, b))
            ra, rb = root(a), root(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)  # the smaller row labels the group
    labels = np.full(n, -1, np.int64)
    for i in touched:
        labels[i] = root(i)
    return labels


def find_groups(index: faiss.Index, chunks: Iterable[np.ndarray], threshold: float) -> np.ndarray:
    """The near-duplicate groups of the images of `index` (see the module doc)."""
    labels = label_groups(int(index.ntotal), near_pairs(index, chunks, threshold))
    grouped = int(np.count_nonzero(labels >= 0))
    log.info("near-duplicates (cosine >= %.3f): %d images in %d groups", threshold, grouped,
             len(np.unique(labels[labels >= 0])))  # fmt: skip
    return labels


def facts(labels: np.ndarray, threshold: float) -> dict[str, float | int]:
    """What the manifest records of the grouping."""
    grouped = labels[labels >= 0]
    return {
        "threshold": threshold,
        "groups": len(np.unique(grouped)),
        "images_in_groups": len(grouped),
    }


def kept_pairs(labels: np.ndarray, rows: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The groups of `labels` as pairs over new row numbers, where row i of the new index is
    old row `rows[i]` (the rows kept, in order): each member paired with its group's first."""
    old = np.asarray(labels)[np.asarray(rows, np.int64)]
    grouped = np.flatnonzero(old >= 0)
    if not len(grouped):
        return
    order = np.argsort(old[grouped], kind="stable")
    members, keys = grouped[order], old[grouped][order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    lengths = np.diff(np.r_[starts, len(keys)])
    yield members, np.repeat(members[starts], lengths)
