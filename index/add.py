"""Append images and captions to an index directory (`python -m index.add`).

`add_to_index` is the model-free core: it loads the directory into memory, adds the new
vectors to both FAISS indexes (a trained IVF / IVF-PQ keeps its centroids; HNSW links the
new nodes in) and writes the result under the same atomic rule as a build. An image whose
id is already indexed is skipped, with its captions, and logged; search parameters
(efSearch, nprobe) stay as built, and recall@10 is measured again.

The program embeds a split (same flags as `index.build`) or a JSON list of
``{"file": PATH, "captions": [...], "image_id": optional}`` with the model and appends it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from index.atomic import writer_lock
from index.collection import caption_records, check_counts, normalize, side_facts
from index.embed import EncodersLike, embed_images, embed_texts
from index.encoders import load_encoders
from index.store import (
    SIDES,
    CaptionRecord,
    ImageRecord,
    IndexPart,
    LoadedIndex,
    ModelMismatchError,
    NewCaption,
    NewImage,
    check_image_id,
    load_index,
    read_manifest,
    write_index_dir,
)

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
            if c.image_id in seen:
                keep_captions.append(j)
            elif c.image_id not in existing:
                raise ValueError(f"new caption {j} refers to unknown image_id {c.image_id!r}")
        dropped = len(new_caption_records) - len(keep_captions)
        if dropped:
            log.info("skipped %d captions of images already indexed", dropped)
        if not keep_images:
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

        row_of = {image_id: row for row, image_id in enumerate(old.image_ids)}
        row_of.update({im.image_id: len(old.image_ids) + i for i, im in enumerate(images)})
        image_records = [
            ImageRecord(i, p) for i, p in zip(old.image_ids, old.image_paths, strict=True)
        ]
        image_records += [
            ImageRecord(im.image_id, im.image_id if im.file is not None else None) for im in images
        ]
        counts = Counter(old.image_ids[r] for r in old.caption_image_rows)
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
            extra={k: v for k, v in manifest.items() if k in ("model",)} | {"updates": history},
            locked=True,
        )


def _old_caption_records(old: LoadedIndex) -> list[CaptionRecord]:
    columns = zip(old.caption_ids, old.caption_image_rows, old.captions, strict=True)
    return [CaptionRecord(cid, int(row), text) for cid, row, text in columns]


# --------------------------------------------------------------------------- program


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command line of `python -m index.add`."""
    p = argparse.ArgumentParser(
        prog="python -m index.add", description="Append images and captions to an index."
    )
    p.add_argument("--model_dir", required=True, help="exported model the index was built with")
    p.add_argument("--index", required=True, type=Path, help="index directory to append to")
    src = p.add_argument_group("what to add: a dataset split, or --items")
    src.add_argument("--images_path", type=Path, help="images root of the dataset")
    src.add_argument("--texts_path", type=Path, help="token file or Karpathy JSON")
    src.add_argument("--imgs_file_path", type=Path, help="split file listing the images")
    src.add_argument("--split", help="split name (train|val|test) instead of a split file")
    src.add_argument("--dataset", default="auto", help="auto|flickr8k|flickr30k|karpathy|coco")
    src.add_argument(
        "--items", type=Path, help='JSON list of {"file", "captions": [...], "image_id"?}'
    )
    p.add_argument("--batch_size", type=int, default=32, help="images / captions per model call")
    p.add_argument(
        "--copy_images",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="copy the image files into INDEX/images (needed to serve them)",
    )
    p.add_argument("--threads", type=int, default=0, help="FAISS threads (0: all cores)")
    p.add_argument("--seed", type=int, default=0, help="seed of the recall measurement")
    args = p.parse_args(argv)
    if (args.items is None) == (args.texts_path is None):
        p.error("give either --items or a dataset (--images_path --texts_path --split/...)")
    if args.texts_path is not None:
        if args.images_path is None:
            p.error("--texts_path needs --images_path")
        if (args.imgs_file_path is None) == (args.split is None):
            p.error("give exactly one of --imgs_file_path and --split")
    if args.batch_size < 1:
        p.error(f"--batch_size={args.batch_size}: must be at least 1")
    return args


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
    manifest = read_manifest(index_dir)
    if manifest["model_hash"] != encoders.model_hash:
        raise ModelMismatchError(
            f"{index_dir} was built with model {manifest['model_hash']}, but --model_dir has "
            f"model {encoders.model_hash}"
        )
    if manifest["dim"] != encoders.embed_dim:
        raise ValueError(
            f"{index_dir} has dim {manifest['dim']}, the model's embed_dim is {encoders.embed_dim}"
        )
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run `python -m index.add`."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.threads:
        import faiss

        faiss.omp_set_num_threads(args.threads)
    if args.items is not None:
        ids, files, caps = read_items(args.items)
    else:
        from training.datasets import load_split

        split = load_split(
            args.images_path,
            args.texts_path,
            args.imgs_file_path or args.split,
            dataset=args.dataset,
        )
        ids, files = list(split.image_ids), list(split.image_paths)
        caps = [split.captions_of(i) for i in range(len(ids))]
    encoders = load_encoders(args.model_dir)
    manifest = add_with_model(
        encoders,
        args.index,
        ids,
        files,
        caps,
        batch_size=args.batch_size,
        copy_images=args.copy_images,
        seed=args.seed,
    )
    log.info(
        "%s now holds %d images and %d captions",
        args.index,
        manifest["images"]["count"],
        manifest["captions"]["count"],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
