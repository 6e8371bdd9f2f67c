"""The VSE++ R@K protocol computed from an index directory (the program: `index.evaluate`).

Every image vector queries the captions and every caption vector queries the images; the
vectors come from the index itself (reconstructed; a bare IVF-PQ stores them as .npy).

- ``exact``: `vsepp.evaluation.evaluate` on those vectors (brute force, R@1/5/10,
  median and mean rank), the numbers a paper would report for the model.
- ``from_index``: R@1/5/10 from each index's own top-10 search, i.e. what the service
  actually returns; ``delta`` = from_index - exact (0 for flat indexes, negative where an
  approximate index misses). Ranks beyond 10 are not known from a top-10 search, so no
  median / mean rank here.

Needs 5 captions per image (the protocol's layout); captions are regrouped by image row, so
an index that was appended to evaluates the same as one built at once.
"""

from __future__ import annotations

import logging
from typing import Any

import faiss
import numpy as np

from index.store import LoadedIndex
from vsepp.evaluation import CAPTIONS_PER_IMAGE, RECALL_AT, evaluate, recalls_at

log = logging.getLogger(__name__)


def _ranks_from_topk(hits: np.ndarray) -> np.ndarray:
    """0-based rank of the first True per row; len(row) when none is within the top-k."""
    k = hits.shape[1]
    return np.where(hits.any(axis=1), hits.argmax(axis=1), k)


def topk_metrics(
    image_rows_i2t: np.ndarray,
    image_rows_t2i: np.ndarray,
    caption_image_rows: np.ndarray,
) -> dict[str, Any]:
    """R@K from top-k results.

    `image_rows_i2t` [N, k]: caption rows found per image; `image_rows_t2i` [C, k]: image
    rows found per caption; `caption_image_rows` [C]: the image of each caption.
    """
    n = image_rows_i2t.shape[0]
    found_images = np.where(
        image_rows_i2t >= 0, caption_image_rows[np.maximum(image_rows_i2t, 0)], -1
    )
    i2t = recalls_at(_ranks_from_topk(found_images == np.arange(n)[:, None]))
    t2i = recalls_at(_ranks_from_topk(image_rows_t2i == caption_image_rows[:, None]))
    rsum = sum(i2t.values()) + sum(t2i.values())
    return {"i2t": i2t, "t2i": t2i, "rsum": float(rsum)}


def _search(index: faiss.Index, queries: np.ndarray, k: int) -> np.ndarray:
    _, rows = index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, index.ntotal))
    return rows


def evaluate_index(loaded: LoadedIndex, *, fold5: bool = False) -> dict[str, Any]:
    """`{"exact", "from_index", "exact_top10", "delta", "approximate"}` for `loaded`."""
    n = len(loaded.image_ids)
    rows = loaded.caption_image_rows
    counts = np.bincount(rows, minlength=n)
    wrong = np.flatnonzero(counts != CAPTIONS_PER_IMAGE)
    if wrong.size:
        i = int(wrong[0])
        raise ValueError(
            f"{loaded.index_dir}: the R@K protocol needs {CAPTIONS_PER_IMAGE} captions per image; "
            f"image {loaded.image_ids[i]!r} has {counts[i]} ({wrong.size} images differ)"
        )
    images = loaded.vectors("images")
    captions = loaded.vectors("captions")
    # Image i owns caption rows 5i..5i+4 in the protocol; appended indexes are regrouped.
    order = np.argsort(rows, kind="stable")
    exact = evaluate(images, captions[order], fold5=fold5)

    k = max(RECALL_AT)
    from_index = topk_metrics(
        _search(loaded.caption_index, images, k), _search(loaded.image_index, captions, k), rows
    )
    exact_topk = topk_metrics(
        faiss.knn(images, captions, min(k, len(captions)), metric=faiss.METRIC_INNER_PRODUCT)[1],
        faiss.knn(captions, images, min(k, n), metric=faiss.METRIC_INNER_PRODUCT)[1],
        rows,
    )
    delta: dict[str, Any] = {
        d: {key: round(from_index[d][key] - exact_topk[d][key], 4) for key in from_index[d]}
        for d in ("i2t", "t2i")
    }
    delta["rsum"] = round(from_index["rsum"] - exact_topk["rsum"], 4)
    return {
        "exact": exact,
        "from_index": from_index,
        "exact_top10": exact_topk,
        "delta": delta,
        "approximate": not (
            loaded.manifest["images"].get("exact") and loaded.manifest["captions"].get("exact")
        ),
        "index_types": {s: loaded.manifest[s]["index_type"] for s in ("images", "captions")},
    }


def format_comparison(result: dict[str, Any]) -> str:
    """The index's own R@K next to exact search."""
    lines = [f"{'':<22}{'R@1':>7}{'R@5':>7}{'R@10':>7}"]
    for label, key in (("Image to text", "i2t"), ("Text to image", "t2i")):
        for name, block in (("index", result["from_index"]), ("exact", result["exact_top10"])):
            m = block[key]
            lines.append(f"{label + ' ' + name:<22}{m['r1']:>7.1f}{m['r5']:>7.1f}{m['r10']:>7.1f}")
    rsum, delta = result["from_index"]["rsum"], result["delta"]["rsum"]
    lines.append(f"rsum: index {rsum:.1f}, delta {delta:+.1f}")
    return "\n".join(lines)
