"""Keeping an index directory current: add images and captions, remove images.

`add_to_index` is the model-free core: it loads the directory into memory, adds the new
vectors to both FAISS indexes (a trained IVF / IVF-PQ keeps its centroids; HNSW links the
new nodes in) and writes the result under the same atomic rule as a build. An image whose
id is already indexed is skipped, with its captions, and logged; search parameters
(efSearch, nprobe) stay as built, and recall@10 is measured again. `add_with_model` embeds
image files and captions first. The program is `python -m index.add`.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from index.builder import (
    CORPUS,
    RECALL_QUERIES,
    IndexPolicy,
    caption_records,
    check_counts,
    empty_vectors,
    side_facts,
)
from index.columnar import RecordsView, caption_table
from index.duplicates import facts as duplicate_facts
from index.duplicates import kept_pairs, label_groups, near_pairs
from index.faiss_index import normalize
from index.records import ImageRecord, image_table
from index.store import (
    SIDES,
    IndexPart,
    LoadedIndex,
    NewCaption,
    NewImage,
    check_built_with,
    check_image_id,
    load_index,
    read_manifest,
    write_index_dir,
)
from vsepp.atomic import writer_lock
from vsepp.embed import embed_images, embed_texts
from vsepp.model_dir import EncodersLike, require_cosine

log = logging.getLogger(__name__)


def add_to_index(
    index_dir: str | os.PathLike[str],
    new_image_vectors: np.ndarray,
    new_image_records: Sequence[NewImage],
    new_caption_vectors: np.ndarray,
    new_caption_records: Sequence[NewCaption],
    *,
    expected_model_hash: str | None = None,
    skipped_images: Sequence[dict[str, Any]] = (),
    seed: int = 0,
) -> dict[str, Any]:
    """Append images and captions to `index_dir`; returns the (new or unchanged) manifest.

    A caption must describe a new image; captions of skipped (already indexed) images are
    skipped with them. Raises ModelMismatchError for another model's hash, ValueError for
    vectors of another dimension.
    """
    check_counts(new_image_vectors, new_image_records, "new images")
    check_counts(new_caption_vectors, new_caption_records, "new captions")
    index_dir = Path(index_dir)
    # Held from read to swap: a concurrent writer cannot start from the same old state.
    with writer_lock(index_dir):
        old = load_index(index_dir, expected_model_hash=expected_model_hash, mmap=False)
        dim = old.dim
        for what, vecs in (("image", new_image_vectors), ("caption", new_caption_vectors)):
            if len(vecs) and np.shape(vecs)[1] != dim:
                raise ValueError(
                    f"new {what} vectors have dim {np.shape(vecs)[1]}, index {index_dir} has "
                    f"dim {dim} (built with model {old.model_hash})"
                )
        keep_images: list[int] = []
        seen: set[str] = set()
        for i, im in enumerate(new_image_records):
            if im.image_id in seen or old.image_row(im.image_id) is not None:
                log.info("image %r is already indexed: skipped", im.image_id)
                continue
            if im.file is not None:
                check_image_id(im.image_id)
            seen.add(im.image_id)
            keep_images.append(i)
        keep_captions = []
        for j, c in enumerate(new_caption_records):
            if c.image_id is None or c.image_id in seen:  # corpus captions always go in
                keep_captions.append(j)
            elif old.image_row(c.image_id) is None:
                raise ValueError(f"new caption {j} refers to unknown image_id {c.image_id!r}")
        dropped = len(new_caption_records) - len(keep_captions)
        if dropped:
            log.info("skipped %d captions of images already indexed", dropped)
        if not keep_images and not keep_captions:
            log.info("nothing new to add to %s", index_dir)
            return old.manifest

        images = [new_image_records[i] for i in keep_images]
        captions = [new_caption_records[j] for j in keep_captions]
        new = {
            "images": normalize(np.asarray(new_image_vectors)[keep_images], "new image vectors"),
            "captions": normalize(
                np.asarray(new_caption_vectors).reshape(-1, dim)[keep_captions],
                "new caption vectors",
            ),
        }
        manifest = old.manifest
        parts = {}
        for side in SIDES:
            index = old.image_index if side == "images" else old.caption_index
            facts = {k: v for k, v in manifest[side].items() if k not in ("count", "vectors_file")}
            # All vectors are needed to re-measure recall and for a stored .npy; an exact
            # index needs neither, so a flat one is never reconstructed.
            vectors = None
            if not facts.get("exact") or manifest[side].get("vectors_file"):
                vectors = np.concatenate([old.vectors(side), new[side]])
            index.add(new[side])
            if vectors is not None and not facts.get("exact"):
                queries = int(facts.get("recall_queries", 1000))
                facts = side_facts(index, facts, vectors, recall_queries=queries, seed=seed)
            parts[side] = IndexPart(index, facts, vectors=vectors)

        groups = _regrouped(old, parts["images"].index, new["images"])
        # New captions describe new images (or none): only their rows are needed.
        row_of = {im.image_id: len(old.image_ids) + i for i, im in enumerate(images)}
        image_records = _appended(old.image_table, [im.record() for im in images])
        counts = Counter({CORPUS: int((old.caption_image_rows < 0).sum())})
        records = pa.concat_tables(
            [old.caption_table, caption_table(caption_records(captions, row_of, counts))]
        )
        history = [
            *manifest.get("updates", []),
            {
                "added_images": len(images),
                "added_captions": len(captions),
                "skipped_existing": len(new_image_records) - len(images),
                "at": datetime.now(UTC).isoformat(timespec="seconds"),
            },
        ]
        return write_index_dir(
            index_dir,
            images=parts["images"],
            captions=parts["captions"],
            image_records=image_records,
            caption_records=records,
            model_hash=old.model_hash,
            image_files={im.image_id: im.file for im in images if im.file is not None},
            previous_dir=index_dir,
            source=manifest.get("source"),
            skipped_images=[*manifest.get("skipped_images", []), *skipped_images],
            extra=_kept_facts(manifest, groups) | {"updates": history},
            locked=True,
            duplicates=groups,
        )


def _regrouped(old: LoadedIndex, index: faiss.Index, added: np.ndarray) -> np.ndarray | None:
    """The near-duplicate groups after `added` (rows from len(old) on) went into `index`:
    the old groups, joined by the new images' neighbours (None: the index has no groups)."""
    threshold = old.manifest.get("near_duplicates", {}).get("threshold")
    if threshold is None or old.duplicate_groups is None:
        return None
    n_old = len(old.image_ids)
    pairs = [*kept_pairs(old.duplicate_groups, np.arange(n_old))]
    for rows, others in near_pairs(index, [added], threshold):
        pairs.append((rows + n_old, others))
    return label_groups(int(index.ntotal), pairs)


def _kept_facts(manifest: dict[str, Any], groups: np.ndarray | None) -> dict[str, Any]:
    """The manifest entries an update carries over (the model; the grouping, recounted)."""
    out = {k: v for k, v in manifest.items() if k in ("model",)}
    if groups is not None:
        out["near_duplicates"] = duplicate_facts(groups, manifest["near_duplicates"]["threshold"])
    return out


def _appended(old: pa.Table, new: Sequence[ImageRecord]) -> pa.Table | list[ImageRecord]:
    """The image records of `old` followed by `new`, as columns when their types agree
    (a list column typed otherwise in the new rows: all as records, typed afresh)."""
    try:
        return pa.concat_tables([old, image_table(new)], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return [*RecordsView(old), *new]


def remove_from_index(
    index_dir: str | os.PathLike[str],
    image_ids: Sequence[str],
    *,
    seed: int = 0,
) -> dict[str, Any]:
    """Remove images (with their own captions and aliases) from `index_dir`, atomically.

    Both FAISS indexes are rebuilt from the remaining vectors with the type and parameters
    they were built with (HNSW cannot delete), and recall@10 is measured again. An id that
    is an alias drops only that alias. Unknown ids are an error naming them.
    """
    index_dir = Path(index_dir)
    with writer_lock(index_dir):
        old = load_index(index_dir, mmap=False)
        drop = set(image_ids)
        found = {image_id: old.image_row(image_id) for image_id in drop}
        aliased = {a for a in drop if found[a] is None and a in old.images_by_alias}
        unknown = sorted(a for a in drop if found[a] is None and a not in aliased)
        if unknown:
            raise ValueError(f"{index_dir}: no image {', '.join(map(repr, unknown[:5]))} to remove")
        n_old = len(old.image_ids)
        dropped = np.zeros(n_old, bool)
        dropped[[r for r in found.values() if r is not None]] = True
        keep = np.flatnonzero(~dropped)
        if not len(keep):
            raise ValueError(f"{index_dir}: removing every image would leave an empty index")
        records = _without_aliases(old.image_table.take(pa.array(keep)), aliased)
        new_row = np.full(n_old + 1, -1, np.int64)  # old row -> new row; [-1]: the corpus
        new_row[keep] = np.arange(len(keep))
        old_rows = old.caption_image_rows
        caption_rows = np.flatnonzero((old_rows < 0) | ~dropped[old_rows])
        captions = old.caption_table.take(pa.array(caption_rows))
        captions = captions.set_column(
            captions.schema.get_field_index("image_row"),
            "image_row",
            pa.array(new_row[old_rows[caption_rows]], pa.int64()),
        )
        manifest = old.manifest
        parts = {}
        for side, rows in (("images", keep), ("captions", caption_rows)):
            facts = manifest[side]
            params = {k: v for k, v in facts.get("params", {}).items() if k != "seed"}
            vectors = np.asarray(old.vectors(side))[rows] if len(rows) else empty_vectors(old.dim)
            parts[side] = IndexPolicy(facts["index_type"], params).build_part(
                vectors,
                seed=seed,
                recall_queries=int(facts.get("recall_queries") or RECALL_QUERIES),
            )
        removed = len(old.image_ids) - len(keep)
        history = [
            *manifest.get("updates", []),
            {
                "removed_images": removed,
                "removed_aliases": len(aliased),
                "removed_captions": len(old.captions) - captions.num_rows,
                "at": datetime.now(UTC).isoformat(timespec="seconds"),
            },
        ]
        log.info("removing %d images and %d aliases from %s", removed, len(aliased), index_dir)
        groups = None
        if old.duplicate_groups is not None:
            groups = label_groups(len(keep), kept_pairs(old.duplicate_groups, np.asarray(keep)))
        return write_index_dir(
            index_dir,
            images=parts["images"],
            captions=parts["captions"],
            image_records=records,
            caption_records=captions,
            model_hash=old.model_hash,
            previous_dir=index_dir,
            source=manifest.get("source"),
            skipped_images=manifest.get("skipped_images", []),
            extra=_kept_facts(manifest, groups) | {"updates": history},
            locked=True,
            duplicates=groups,
        )


def missing_images(index_dir: str | os.PathLike[str]) -> list[str]:
    """Ids of the indexed images whose source file is gone (images with a recorded source)."""
    table = load_index(index_dir).image_table.select(["image_id", "source"])
    table = table.filter(pc.is_valid(table.column("source")))
    pairs = zip(
        table.column("image_id").to_pylist(), table.column("source").to_pylist(), strict=True
    )
    return [image_id for image_id, source in pairs if not os.path.exists(os.fsdecode(source))]


def _without_aliases(images: pa.Table, aliased: set[str]) -> pa.Table:
    """`images` with the aliases in `aliased` taken out of their rows' lists."""
    if not aliased:
        return images
    column = images.column("aliases").to_pylist()
    kept = [None if a is None else [x for x in a if x not in aliased] for a in column]
    index = images.schema.get_field_index("aliases")
    return images.set_column(index, "aliases", pa.array(kept, pa.list_(pa.string())))


def read_items(path: Path) -> tuple[list[str], list[Path], list[list[str]]]:
    """(image ids, files, captions per image) of an --items JSON file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"--items {path}: cannot read it ({e})") from e
    if not isinstance(data, list) or not data:
        raise ValueError(f"--items {path}: expected a non-empty JSON list")
    ids, files, caps = [], [], []
    for i, item in enumerate(data):
        if not isinstance(item, dict) or not isinstance(item.get("file"), str):
            raise ValueError(f"--items {path} [{i}]: needs a string field 'file'")
        texts = item.get("captions", [])
        if not isinstance(texts, list) or not all(isinstance(t, str) and t.strip() for t in texts):
            raise ValueError(f"--items {path} [{i}]: 'captions' must be non-empty strings")
        file = (path.parent / item["file"]).resolve()
        image_id = item.get("image_id", file.name)
        if not isinstance(image_id, str):
            raise ValueError(f"--items {path} [{i}]: 'image_id' must be a string")
        ids.append(image_id)
        files.append(file)
        caps.append(texts)
    return ids, files, caps


def add_with_model(
    encoders: EncodersLike,
    index_dir: Path,
    image_ids: Sequence[str],
    files: Sequence[Path],
    captions: Sequence[Sequence[str]],
    *,
    batch_size: int = 32,
    copy_images: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Embed images (`files`) and their captions with `encoders` and append them."""
    require_cosine(encoders.manifest)
    check_built_with(index_dir, read_manifest(index_dir), encoders.model_hash, encoders.embed_dim)
    vectors, kept, skipped = embed_images(encoders, image_ids, files, batch_size=batch_size)
    images = [NewImage(image_ids[i], files[i] if copy_images else None) for i in kept]
    new_captions = [NewCaption(image_ids[i], t) for i in kept for t in captions[i]]
    caption_vectors = embed_texts(encoders, [c.text for c in new_captions], batch_size=batch_size)
    return add_to_index(
        index_dir,
        vectors,
        images,
        caption_vectors,
        new_captions,
        expected_model_hash=encoders.model_hash,
        skipped_images=skipped,
        seed=seed,
    )
