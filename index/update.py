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
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from index.builder import (
    CORPUS,
    RECALL_QUERIES,
    IndexPolicy,
    caption_records,
    check_counts,
    empty_vectors,
    side_facts,
)
from index.duplicates import facts as duplicate_facts
from index.duplicates import kept_pairs, label_groups, near_pairs
from index.faiss_index import normalize
from index.store import (
    SIDES,
    CaptionRecord,
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
        existing = set(old.image_ids)
        keep_images: list[int] = []
        seen: set[str] = set()
        for i, im in enumerate(new_image_records):
            if im.image_id in existing or im.image_id in seen:
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
            elif c.image_id not in existing:
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
        row_of = {image_id: row for row, image_id in enumerate(old.image_ids)}
        row_of.update({im.image_id: len(old.image_ids) + i for i, im in enumerate(images)})
        image_records = [*old.image_records, *(im.record() for im in images)]
        counts = _caption_counts(old)
        records = [*_old_caption_records(old), *caption_records(captions, row_of, counts)]
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


def _caption_counts(old: LoadedIndex) -> Counter[str]:
    """Captions per image id (and of the corpus), so new caption ids continue the count."""
    return Counter(CORPUS if r < 0 else old.image_ids[r] for r in old.caption_image_rows)


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
        aliased = {a for a in drop if a in old.images_by_alias}
        unknown = sorted(drop - set(old.image_ids) - aliased)
        if unknown:
            raise ValueError(f"{index_dir}: no image {', '.join(map(repr, unknown[:5]))} to remove")
        keep = [i for i, image_id in enumerate(old.image_ids) if image_id not in drop]
        if not keep:
            raise ValueError(f"{index_dir}: removing every image would leave an empty index")
        new_row = {old_row: new for new, old_row in enumerate(keep)}
        records = [
            replace(r, aliases=tuple(a for a in r.aliases if a not in aliased))
            for r in (old.image_records[i] for i in keep)
        ]
        caption_rows = [j for j, r in enumerate(old.caption_image_rows) if r < 0 or r in new_row]
        captions = [
            CaptionRecord(
                old.caption_ids[j],
                -1 if old.caption_image_rows[j] < 0 else new_row[int(old.caption_image_rows[j])],
                old.captions[j],
            )
            for j in caption_rows
        ]
        manifest = old.manifest
        parts = {}
        for side, rows in (("images", keep), ("captions", caption_rows)):
            facts = manifest[side]
            params = {k: v for k, v in facts.get("params", {}).items() if k != "seed"}
            vectors = np.asarray(old.vectors(side))[rows] if rows else empty_vectors(old.dim)
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
                "removed_captions": len(old.captions) - len(captions),
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
    loaded = load_index(index_dir)
    return [r.image_id for r in loaded.image_records if r.source and not os.path.exists(r.source)]


def _old_caption_records(old: LoadedIndex) -> list[CaptionRecord]:
    columns = zip(old.caption_ids, old.caption_image_rows, old.captions, strict=True)
    return [CaptionRecord(cid, int(row), text) for cid, row, text in columns]


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
