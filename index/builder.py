"""Building an index directory, from any source, one way.

Which index will my folder get, and where is it written? Here, in three steps:

1. The source becomes shards (`index.shards`): a folder or a list (`FilesSource`), a
   dataset split (`SplitSource`: its images keep their five captions, nothing is merged as a
   byte copy) are embedded into ``OUT.shards`` (or `BuildOptions.shards_dir`) in bounded
   memory, resumable after a kill; shards made elsewhere (`ShardsSource`: an earlier run,
   `index.beam_embed`) are used as they are.
2. `IndexPolicy` picks each side's FAISS index, and nothing else does: ``index_type``
   (``auto``: exact up to 50k vectors, HNSW above; `index.faiss_index`) with ``params``, or
   a memory budget (``max_index_memory``: flat while it fits, then HNSW, then IVF with
   SQ8/PQ codes in on-disk lists; `index.budget`, built from the streamed shards by
   `index.streaming`).
3. The records and the built parts are written to OUT atomically (`index.store`): the
   previous index there stays whole until the new one is complete. The shards of a source
   embedded here go afterwards unless `BuildOptions.keep_shards`.

`build_index_dir` runs steps 2 and 3 on vectors already in memory (the tests' synthetic
collections). The program is `python -m index.build`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from index.duplicates import DEFAULT_THRESHOLD, find_groups
from index.duplicates import facts as duplicate_facts
from index.faiss_index import build_index, measure_recall, normalize
from index.shards import (
    SHARD_SIZE,
    Summary,
    collect_shards,
    embed_to_shards,
    read_shards_meta,
    require_embedded,
    shard_sources,
    write_corpus,
)
from index.sources import SourceImage, read_caption_corpus
from index.store import (
    CaptionRecord,
    IndexPart,
    NewCaption,
    NewImage,
    check_image_id,
    write_index_dir,
)
from index.streaming import ArraySource, VectorSource, budgeted_parts
from vsepp.datasets import SplitData
from vsepp.embed import embed_texts
from vsepp.images import DEFAULT_MAX_PIXELS
from vsepp.model_dir import (
    EncodersLike,
    load_encoders,
    model_facts,
    read_model_manifest,
    require_cosine,
)

log = logging.getLogger(__name__)

RECALL_QUERIES = 1000  # queries for the recall@10 recorded in the manifest
CORPUS = "corpus"  # caption-id prefix of captions tied to no image


@dataclass(frozen=True)
class IndexPolicy:
    """Which FAISS index each side (images, captions) gets: an index type with its
    parameters, or a memory budget that chooses the type itself."""

    index_type: str = "auto"
    params: Mapping[str, int | float] = field(default_factory=dict)
    max_index_memory: int | None = None  # bytes

    def __post_init__(self) -> None:
        if self.max_index_memory is not None and (self.index_type != "auto" or self.params):
            raise ValueError(
                "a memory budget picks the index itself: give it without an index type or "
                "parameters"
            )

    def build_parts(
        self,
        sources: Mapping[str, VectorSource],
        scratch: Path,
        *,
        chunk_rows: int,
        seed: int,
        recall_queries: int,
    ) -> dict[str, IndexPart]:
        """Both sides' indexes over their (normalised) vectors, with the manifest facts."""
        if self.max_index_memory is not None:
            return budgeted_parts(dict(sources), self.max_index_memory, scratch,
                                  chunk_rows=chunk_rows, seed=seed,
                                  recall_queries=recall_queries)  # fmt: skip
        return {
            side: self.build_part(_gathered(source), seed=seed, recall_queries=recall_queries)
            for side, source in sources.items()
        }

    def build_part(self, x: np.ndarray, *, seed: int, recall_queries: int) -> IndexPart:
        """One side's index of the vectors `x`, held in memory (`index.faiss_index`)."""
        if not len(x):
            return IndexPart.empty(int(x.shape[1]), requested_type=self.index_type)
        index, info = build_index(x, self.index_type, seed=seed, **dict(self.params))
        facts = side_facts(index, info, x, recall_queries=recall_queries, seed=seed)
        return IndexPart(index, facts, vectors=x)


@dataclass(frozen=True)
class BuildOptions:
    """How a build runs; what it builds is the source's and the policy's."""

    copy_images: bool = True  # copy the image files into OUT/images (served from there)
    seed: int = 0  # k-means, HNSW levels and the recall queries
    recall_queries: int = RECALL_QUERIES
    batch_size: int = 32  # images per model call
    precision: str = "auto"  # of the image encoder, when the build loads it
    shards_dir: Path | None = None  # where embedded shards go; default OUT.shards
    shard_size: int = SHARD_SIZE
    resume: bool = False  # go on from the complete shards of a killed run
    keep_shards: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    # Images whose vectors are at least this close (cosine) form near-duplicate groups
    # (`index.duplicates`); None: no grouping.
    near_duplicates: float | None = DEFAULT_THRESHOLD


@dataclass(frozen=True)
class FilesSource:
    """A folder or a list file of images (`index.sources`), and optionally a caption corpus
    tied to no image."""

    items: Callable[[], Iterator[SourceImage]]
    facts: dict[str, Any]  # what the manifest records of the source (kind, path)
    captions: Path | None = None


@dataclass(frozen=True)
class SplitSource:
    """A dataset split: its images, each with its own captions."""

    split: SplitData
    facts: dict[str, Any] = field(default_factory=dict)  # paths and names it was read from

    def items(self) -> Iterator[SourceImage]:
        s = self.split
        k = s.captions_per_image
        for i, (image_id, path) in enumerate(zip(s.image_ids, s.image_paths, strict=True)):
            yield SourceImage(image_id, Path(path), tuple(s.captions[k * i : k * i + k]))


@dataclass(frozen=True)
class ShardsSource:
    """Shards embedded earlier or elsewhere (`index.beam_embed`)."""

    path: Path


Source = FilesSource | SplitSource | ShardsSource


@dataclass
class Built:
    """What `build` did: the manifest written, and the embedding run's summary (None for
    ready shards)."""

    manifest: dict[str, Any]
    embedded: Summary | None


def build(
    source: Source,
    out: str | os.PathLike[str],
    policy: IndexPolicy,
    options: BuildOptions,
    model: EncodersLike | str | os.PathLike[str],
) -> Built:
    """Write the index directory `out` from `source` (see the module doc).

    `model` is the exported model: loaded encoders, or its directory (loaded with
    `options.precision` when the source needs embedding; for ready shards only its hash is
    read, and shards of another model are refused).
    """
    if isinstance(source, ShardsSource):
        if isinstance(model, str | os.PathLike):
            model_hash = str(read_model_manifest(model)["content_hash"])
        else:
            model_hash = model.model_hash
        manifest = index_shards(source.path, out, policy, options, model_hash=model_hash,
                                source=_model_dir(model))  # fmt: skip
        return Built(manifest, None)
    encoders = model
    if isinstance(encoders, str | os.PathLike):
        encoders = load_encoders(encoders, options.precision)
    require_cosine(encoders.manifest)
    shards = options.shards_dir or Path(f"{out}.shards")
    summary = _embed(source, encoders, shards, options)
    manifest = index_shards(shards, out, policy, options, model_hash=encoders.model_hash,
                            source=_model_dir(model),
                            extra={"model": model_facts(encoders)})  # fmt: skip
    if not options.keep_shards:
        shutil.rmtree(shards, ignore_errors=True)
    return Built(manifest, summary)


def _model_dir(model: EncodersLike | str | os.PathLike[str]) -> dict[str, str]:
    """The model directory as the manifest's source records it (none for loaded encoders)."""
    return {"model_dir": str(model)} if isinstance(model, str | os.PathLike) else {}


def _embed(
    source: FilesSource | SplitSource, encoders: EncodersLike, shards: Path, options: BuildOptions
) -> Summary:
    """Embed the source's images (and corpus) into `shards`."""
    if isinstance(source, SplitSource):
        split = source.split
        if not split.image_ids:
            raise ValueError(f"split {split.name!r} has no images: nothing to index")
        facts = {"kind": "split", "split": split.name,
                 "captions_per_image": split.captions_per_image, **source.facts}  # fmt: skip
        items, dedupe = source.items(), False
    else:
        facts, items, dedupe = source.facts, source.items(), True
    summary = embed_to_shards(
        items,
        encoders,
        shards,
        source=facts,
        shard_size=options.shard_size,
        batch_size=options.batch_size,
        resume=options.resume,
        max_pixels=options.max_pixels,
        dedupe=dedupe,
    )
    if isinstance(source, FilesSource) and source.captions is not None:
        texts = read_caption_corpus(source.captions)
        write_corpus(shards, texts, embed_texts(encoders, texts))
    return summary


def index_shards(
    shards_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    policy: IndexPolicy,
    options: BuildOptions,
    *,
    model_hash: str | None = None,
    source: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the index directory `out` from the complete shards of `shards_dir`: records
    first (a half-written shard, or one of another model than `model_hash`, is refused
    before any training), then the vectors streamed shard by shard into `policy`'s indexes.
    Skipped files are listed with their reason in the manifest."""
    meta = read_shards_meta(shards_dir)
    got = collect_shards(shards_dir, copy_images=options.copy_images,
                         expected_model_hash=model_hash, vectors=False)  # fmt: skip
    require_embedded(got, shards_dir)
    sources = shard_sources(shards_dir, int(meta["dim"]))
    with scratch_beside(out) as scratch:
        parts = policy.build_parts(sources, scratch,
                                   chunk_rows=int(meta.get("shard_size", SHARD_SIZE)),
                                   seed=options.seed,
                                   recall_queries=options.recall_queries)  # fmt: skip
        return write_parts(
            out,
            parts,
            got.images,
            got.captions,
            model_hash=str(meta["model_hash"]),
            source={**meta["source"], **(source or {}), "duplicates": got.duplicates},
            skipped_images=got.skipped,
            extra=extra,
            near_duplicates=_near_duplicates(parts, sources, options.near_duplicates),
        )


def _near_duplicates(
    parts: Mapping[str, IndexPart], sources: Mapping[str, VectorSource], threshold: float | None
) -> tuple[np.ndarray, float] | None:
    """The images' near-duplicate groups, found with their built index, and the threshold."""
    if threshold is None:
        return None
    labels = find_groups(parts["images"].index, sources["images"].chunks(), threshold)
    return labels, threshold


def build_index_dir(
    out: str | os.PathLike[str],
    image_vectors: np.ndarray,
    images: Sequence[NewImage],
    caption_vectors: np.ndarray,
    captions: Sequence[NewCaption],
    *,
    model_hash: str,
    policy: IndexPolicy | None = None,
    seed: int = 0,
    recall_queries: int = RECALL_QUERIES,
    source: dict[str, Any] | None = None,
    skipped_images: Sequence[dict[str, Any]] = (),
    extra: dict[str, Any] | None = None,
    near_duplicates: float | None = None,
) -> dict[str, Any]:
    """Steps 2 and 3 on vectors in memory: both indexes by `policy` (default: auto), and the
    index directory `out` written atomically. Images with a `file` are copied into
    `out`/images/; `near_duplicates` (a cosine) groups the images as a build does. Returns
    the manifest."""
    if not images:
        raise ValueError("no images to index")
    check_counts(image_vectors, images, "images")
    check_counts(caption_vectors, captions, "captions")
    img = normalize(image_vectors, "image vectors")
    dim = img.shape[1]
    cap = normalize(caption_vectors, "caption vectors") if len(captions) else empty_vectors(dim)
    if cap.shape[1] != dim:
        raise ValueError(f"image vectors have dim {dim}, caption vectors {cap.shape[1]}")
    sources = {"images": ArraySource(img), "captions": ArraySource(cap)}
    with scratch_beside(out) as scratch:
        parts = (policy or IndexPolicy()).build_parts(sources, scratch, chunk_rows=65536,
                                                      seed=seed,
                                                      recall_queries=recall_queries)  # fmt: skip
        return write_parts(out, parts, images, captions, model_hash=model_hash, source=source,
                           skipped_images=skipped_images, extra=extra,
                           near_duplicates=_near_duplicates(parts, sources,
                                                            near_duplicates))  # fmt: skip


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
    near_duplicates: tuple[np.ndarray, float] | None = None,
) -> dict[str, Any]:
    """Write the index directory `out` from built parts and the records they index (rows in
    `images`' order, captions pointing at their image's row). Ids must be unique, and those
    of copied files safe as relative paths. `near_duplicates`: (groups, threshold)."""
    row_of: dict[str, int] = {}
    for row, im in enumerate(images):
        if im.image_id in row_of:
            raise ValueError(f"image_id {im.image_id!r} appears twice")
        row_of[im.image_id] = row
        if im.file is not None:
            check_image_id(im.image_id)
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
        extra=extra
        if near_duplicates is None
        else {**(extra or {}), "near_duplicates": duplicate_facts(*near_duplicates)},
        duplicates=None if near_duplicates is None else near_duplicates[0],
    )


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


def empty_vectors(dim: int) -> np.ndarray:
    return np.zeros((0, dim), np.float32)


def _gathered(source: VectorSource) -> np.ndarray:
    """All of a source's rows in one array (an in-memory index holds them anyway)."""
    chunks = list(source.chunks())
    return np.concatenate(chunks) if chunks else empty_vectors(source.d)


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
