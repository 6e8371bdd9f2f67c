"""Building an index directory: vectors + ids + captions in, an index directory out.

`build_index_dir` is model-free (tests call it with synthetic vectors); `build_from_split`
embeds a dataset split with a model first. The program is `python -m index.build`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from index.faiss_index import build_index, measure_recall
from index.shards import ShardsError, read_corpus, read_shards, read_shards_meta
from index.store import (
    CaptionRecord,
    IndexPart,
    NewCaption,
    NewImage,
    check_image_id,
    write_index_dir,
)
from index.streaming import ArraySource, ChunkSource, VectorSource, budgeted_parts
from vsepp.datasets import SplitData
from vsepp.embed import embed_images, embed_texts
from vsepp.model_dir import EncodersLike

log = logging.getLogger(__name__)

RECALL_QUERIES = 1000  # queries for the recall@10 recorded in the manifest
CORPUS = "corpus"  # caption-id prefix of captions tied to no image
_NORM_TOLERANCE = 1e-3


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
    off = int((np.abs(norms - 1) > _NORM_TOLERANCE).sum())
    if off:
        log.warning("%s: %d of %d vectors were not unit length; normalised them", what, off, len(x))
        x = x / norms
    return x


def caption_records(
    captions: Sequence[NewCaption],
    row_of: Mapping[str, int],
    counts: Counter[str] | None = None,
) -> list[CaptionRecord]:
    """Records for `captions`; ids are "IMAGE_ID#n", n continuing from `counts` per image
    (a corpus caption, tied to no image, is "corpus#n" with image row -1)."""
    counts = Counter() if counts is None else counts
    out = []
    for c in captions:
        if c.image_id is None:
            out.append(CaptionRecord(f"{CORPUS}#{counts[CORPUS]}", -1, c.text))
            counts[CORPUS] += 1
            continue
        if c.image_id not in row_of:
            raise ValueError(f"caption {c.text[:40]!r} refers to unknown image_id {c.image_id!r}")
        out.append(CaptionRecord(f"{c.image_id}#{counts[c.image_id]}", row_of[c.image_id], c.text))
        counts[c.image_id] += 1
    return out


def check_counts(vectors: np.ndarray, records: Sequence[Any], what: str) -> None:
    """One vector per record."""
    if len(vectors) != len(records):
        raise ValueError(f"{what}: {len(vectors)} vectors for {len(records)} records")


def side_facts(
    index: faiss.Index, info: dict[str, Any], vectors: np.ndarray, *, recall_queries: int, seed: int
) -> dict[str, Any]:
    """The manifest section of one side: build facts plus measured recall@10."""
    facts = dict(info)
    if info["exact"]:
        facts["recall_at_10"] = 1.0
    else:
        facts["recall_at_10"] = round(
            measure_recall(index, vectors, k=10, n_queries=recall_queries, seed=seed), 4
        )
        log.info("%s: recall@10 %.3f", info["factory"], facts["recall_at_10"])
    facts["recall_queries"] = min(recall_queries, len(vectors))
    return facts


def build_index_dir(
    out: str | os.PathLike[str],
    image_vectors: np.ndarray,
    images: Sequence[NewImage],
    caption_vectors: np.ndarray,
    captions: Sequence[NewCaption],
    *,
    model_hash: str,
    index_type: str = "auto",
    params: Mapping[str, Any] | None = None,
    seed: int = 0,
    recall_queries: int = RECALL_QUERIES,
    source: dict[str, Any] | None = None,
    skipped_images: Sequence[dict[str, Any]] = (),
    extra: dict[str, Any] | None = None,
    max_index_memory: int | None = None,
) -> dict[str, Any]:
    """Build both FAISS indexes and write the index directory `out` atomically.

    Images with a `file` are copied into `out`/images/. `params` go to `build_index` for
    both sides (`auto` picks each side's type from its own size). With `max_index_memory`
    (bytes) the budget picks both sides' indexes instead (`index.budget`). Returns the
    manifest.
    """
    if not images:
        raise ValueError("no images to index")
    check_counts(image_vectors, images, "images")
    check_counts(caption_vectors, captions, "captions")
    seen: set[str] = set()
    for im in images:
        if im.image_id in seen:
            raise ValueError(f"image_id {im.image_id!r} appears twice")
        seen.add(im.image_id)
        if im.file is not None:
            check_image_id(im.image_id)
    img = normalize(image_vectors, "image vectors")
    dim = img.shape[1]
    cap = normalize(caption_vectors, "caption vectors") if len(captions) else empty_vectors(dim)
    if cap.shape[1] != dim:
        raise ValueError(f"image vectors have dim {dim}, caption vectors {cap.shape[1]}")

    def write(parts: dict[str, IndexPart]) -> dict[str, Any]:
        return write_parts(out, parts, images, captions, model_hash=model_hash,
                           source=source, skipped_images=skipped_images, extra=extra)  # fmt: skip

    if max_index_memory is not None:
        sources: dict[str, VectorSource] = {
            "images": ArraySource(img),
            "captions": ArraySource(cap),
        }
        with scratch_beside(out) as scratch:
            return write(budgeted_parts(sources, max_index_memory, scratch, chunk_rows=65536,
                                        seed=seed, recall_queries=recall_queries))  # fmt: skip
    return write(
        {
            side: build_part(x, index_type, params, seed=seed, recall_queries=recall_queries)
            for side, x in (("images", img), ("captions", cap))
        }
    )


def write_parts(
    out: str | os.PathLike[str],
    parts: Mapping[str, IndexPart],
    images: Sequence[NewImage],
    captions: Sequence[NewCaption],
    *,
    model_hash: str,
    source: dict[str, Any] | None,
    skipped_images: Sequence[dict[str, Any]] = (),
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the index directory `out` from built parts and the records they index (rows in
    `images`' order, captions pointing at their image's row)."""
    row_of = {im.image_id: row for row, im in enumerate(images)}
    return write_index_dir(
        out,
        images=parts["images"],
        captions=parts["captions"],
        image_records=[im.record() for im in images],
        caption_records=caption_records(captions, row_of),
        model_hash=model_hash,
        image_files={im.image_id: im.file for im in images if im.file is not None},
        source=source,
        skipped_images=skipped_images,
        extra=extra,
    )


@contextlib.contextmanager
def scratch_beside(out: str | os.PathLike[str]) -> Iterator[Path]:
    """A scratch directory beside `out` (same file system: the .ivfdata files built in it
    are renamed into the index directory), removed afterwards."""
    target = Path(out).absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.parent / f".{target.name}.scratch-{uuid.uuid4().hex[:8]}"
    scratch.mkdir()
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def empty_vectors(dim: int) -> np.ndarray:
    return np.zeros((0, dim), np.float32)


def build_part(
    x: np.ndarray,
    index_type: str,
    params: Mapping[str, Any] | None,
    *,
    seed: int,
    recall_queries: int,
) -> IndexPart:
    """One side's FAISS index and manifest facts; an empty side is an empty exact index
    (an index of images only answers text-to-image and image-to-image searches)."""
    if not len(x):
        facts = {"index_type": "flat", "requested_type": index_type, "params": {},
                 "factory": "Flat", "count": 0, "dim": int(x.shape[1]), "exact": True,
                 "metric": "inner_product", "recall_at_10": 1.0, "recall_queries": 0}  # fmt: skip
        return IndexPart(faiss.IndexFlatIP(int(x.shape[1])), facts, vectors=x)
    index, info = build_index(x, index_type, seed=seed, **dict(params or {}))
    facts = side_facts(index, info, x, recall_queries=recall_queries, seed=seed)
    return IndexPart(index, facts, vectors=x)


@dataclass
class Collected:
    """The contents of a shards directory, ready for `build_index_dir` or `add_to_index`."""

    image_vectors: np.ndarray
    images: list[NewImage]
    caption_vectors: np.ndarray
    captions: list[NewCaption]
    skipped: list[dict[str, Any]]
    duplicates: int
    meta: dict[str, Any]


def collect_shards(
    shards_dir: str | os.PathLike[str],
    *,
    copy_images: bool,
    expected_model_hash: str | None = None,
    vectors: bool = True,
) -> Collected:
    """Read every shard (and the corpus); duplicates become aliases of the image they repeat.
    Holds all vectors (the caller's in-memory index needs them anyway) unless `vectors` is
    False: then the vector arrays are empty. Shards embedded with another model than
    `expected_model_hash`, half-written or missing ones are refused."""
    meta = read_shards_meta(shards_dir)
    if expected_model_hash is not None and meta.get("model_hash") != expected_model_hash:
        raise ShardsError(
            f"{shards_dir} was embedded with the model of hash {meta.get('model_hash')!r}, not "
            f"with this --model_dir's {expected_model_hash!r}: its vectors live in another "
            "space; embed the images again with this model (or build with the model that "
            "made them)"
        )
    dim = int(meta["dim"])
    records: list[dict[str, Any]] = []
    image_vectors, caption_vectors = [empty_vectors(dim)], [empty_vectors(dim)]
    skipped: list[dict[str, Any]] = []
    aliases: dict[str, list[str]] = {}
    for shard in read_shards(shards_dir):
        records.extend(shard.images)
        if vectors:
            image_vectors.append(np.asarray(shard.vectors))
            caption_vectors.append(np.asarray(shard.caption_vectors))
        skipped.extend(shard.skipped)
        for d in shard.duplicates:
            aliases.setdefault(d["of"], []).append(d["image_id"])
    images = [
        NewImage(
            r["image_id"],
            Path(r["file"]) if copy_images else None,
            r["width"],
            r["height"],
            r["meta"] or None,
            tuple(aliases.get(r["image_id"], ())),
            r["file"],
        )
        for r in records
    ]
    captions = [NewCaption(r["image_id"], t) for r in records for t in r["captions"]]
    corpus = read_corpus(shards_dir)
    if corpus is not None:
        captions += [NewCaption(None, t) for t in corpus[0]]
        if vectors:
            caption_vectors.append(corpus[1])
    return Collected(
        np.concatenate(image_vectors),
        images,
        np.concatenate(caption_vectors),
        captions,
        skipped,
        sum(len(v) for v in aliases.values()),
        meta,
    )


def require_embedded(got: Collected, shards_dir: str | os.PathLike[str]) -> None:
    """Refuse shards in which no image was embedded, naming the first skipped file's reason."""
    if not got.images:
        first = f" (first: {got.skipped[0]['image_id']}: {got.skipped[0]['reason']})"
        raise ValueError(f"{shards_dir}: no image could be embedded{first if got.skipped else ''}")


def build_from_shards(
    shards_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    index_type: str = "auto",
    params: Mapping[str, Any] | None = None,
    copy_images: bool = True,
    seed: int = 0,
    recall_queries: int = RECALL_QUERIES,
    source: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    expected_model_hash: str | None = None,
    max_index_memory: int | None = None,
) -> dict[str, Any]:
    """Write the index directory `out` from the complete shards of `shards_dir`; skipped
    files are listed with their reason in the manifest. With `max_index_memory` (bytes)
    the vectors are streamed shard by shard, never all in memory (`build_budgeted`)."""
    if max_index_memory is not None:
        return build_budgeted(shards_dir, out, max_index_memory, copy_images=copy_images,
                              seed=seed, recall_queries=recall_queries, source=source,
                              extra=extra, expected_model_hash=expected_model_hash)  # fmt: skip
    got = collect_shards(
        shards_dir, copy_images=copy_images, expected_model_hash=expected_model_hash
    )
    require_embedded(got, shards_dir)
    return build_index_dir(
        out,
        got.image_vectors,
        got.images,
        got.caption_vectors,
        got.captions,
        model_hash=str(got.meta["model_hash"]),
        index_type=index_type,
        params=params,
        seed=seed,
        recall_queries=recall_queries,
        source={**got.meta["source"], **(source or {}), "duplicates": got.duplicates},
        skipped_images=got.skipped,
        extra=extra,
    )


def _normalized(chunks: Iterator[np.ndarray], what: str) -> Iterator[np.ndarray]:
    for chunk in chunks:
        yield normalize(chunk, what)


def shard_sources(shards_dir: str | os.PathLike[str], dim: int) -> dict[str, VectorSource]:
    """The image and caption vectors of the shards (and the corpus) as streamed sources."""
    n_images = n_captions = 0
    for shard in read_shards(shards_dir):
        n_images += len(shard.vectors)
        n_captions += len(shard.caption_vectors)
    corpus = read_corpus(shards_dir)
    n_captions += 0 if corpus is None else len(corpus[1])

    def images() -> Iterator[np.ndarray]:
        return _normalized((s.vectors for s in read_shards(shards_dir)), "image vectors")

    def captions() -> Iterator[np.ndarray]:
        def raw() -> Iterator[np.ndarray]:
            for s in read_shards(shards_dir):
                if len(s.caption_vectors):
                    yield s.caption_vectors
            extra = read_corpus(shards_dir)
            if extra is not None and len(extra[1]):
                yield extra[1]

        return _normalized(raw(), "caption vectors")

    return {
        "images": ChunkSource(n_images, dim, images),
        "captions": ChunkSource(n_captions, dim, captions),
    }


def build_budgeted(
    shards_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    max_index_memory: int,
    *,
    copy_images: bool = True,
    seed: int = 0,
    recall_queries: int = RECALL_QUERIES,
    source: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    expected_model_hash: str | None = None,
) -> dict[str, Any]:
    """`build_from_shards` under a memory budget: the budget picks each side's index
    (`index.budget.choose_pair`), built from the shards streamed one at a time
    (`index.streaming`); records (images.json, captions.json) are held as in any build."""
    meta = read_shards_meta(shards_dir)
    dim = int(meta["dim"])
    # The records first (an empty array stands for the vectors the parts will hold): a
    # half-written shard or another model's is refused before any training.
    got = collect_shards(shards_dir, copy_images=copy_images,
                         expected_model_hash=expected_model_hash, vectors=False)  # fmt: skip
    require_embedded(got, shards_dir)
    sources = shard_sources(shards_dir, dim)
    with scratch_beside(out) as scratch:
        parts = budgeted_parts(sources, max_index_memory, scratch,
                               chunk_rows=int(meta.get("shard_size", 10_000)), seed=seed,
                               recall_queries=recall_queries)  # fmt: skip
        return write_parts(
            out,
            parts,
            got.images,
            got.captions,
            model_hash=str(meta["model_hash"]),
            source={**meta["source"], **(source or {}), "duplicates": got.duplicates},
            skipped_images=got.skipped,
            extra=extra,
        )


def require_cosine(model_manifest: Mapping[str, Any]) -> None:
    """Refuse a model FAISS cannot search: order embeddings rank by order violation, which no
    FAISS metric computes (the index searches by inner product, cosine on unit vectors)."""
    measure = model_manifest.get("measure", "cosine")
    if measure != "cosine":
        raise ValueError(
            f"the model was trained with --measure {measure}; the index searches by inner "
            "product (cosine on normalised vectors): index a --measure cosine model"
        )


def build_from_split(
    split: SplitData,
    encoders: EncodersLike,
    out: Path,
    *,
    index_type: str = "auto",
    params: dict[str, Any] | None = None,
    batch_size: int = 32,
    copy_images: bool = True,
    seed: int = 0,
    recall_queries: int = RECALL_QUERIES,
    source: dict[str, Any] | None = None,
    model_facts: dict[str, Any] | None = None,
    max_index_memory: int | None = None,
) -> dict[str, Any]:
    """Embed `split` with `encoders` and write the index directory `out`; its manifest."""
    require_cosine(encoders.manifest)
    if not split.image_ids:
        raise ValueError(f"split {split.name!r} has no images: nothing to index")
    vectors, kept, skipped = embed_images(
        encoders, split.image_ids, split.image_paths, batch_size=batch_size
    )
    if not kept:
        raise ValueError(
            f"split {split.name!r}: none of its {len(split.image_ids)} images could be embedded "
            f"(first: {skipped[0]['image_id']}: {skipped[0]['reason']})"
        )
    k = split.captions_per_image
    images = [
        NewImage(split.image_ids[i], Path(split.image_paths[i]) if copy_images else None)
        for i in kept
    ]
    captions = [
        NewCaption(split.image_ids[i], text)
        for i in kept
        for text in split.captions[k * i : k * i + k]
    ]
    caption_vectors = embed_texts(encoders, [c.text for c in captions], batch_size=8 * batch_size)
    return build_index_dir(
        out,
        vectors,
        images,
        caption_vectors,
        captions,
        model_hash=encoders.model_hash,
        index_type=index_type,
        params=params,
        seed=seed,
        recall_queries=recall_queries,
        source={"split": split.name, "captions_per_image": k, **(source or {})},
        skipped_images=skipped,
        extra={"model": model_facts} if model_facts else None,
        max_index_memory=max_index_memory,
    )
