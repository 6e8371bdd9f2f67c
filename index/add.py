"""Append images and captions to an index directory (`python -m index.add`).

    python -m index.add --model_dir runs/model --index_dir idx --images_dir ~/Pictures/new
    python -m index.add --model_dir runs/model --index_dir idx --list more.csv
    python -m index.add --model_dir runs/model --index_dir idx --items new.json

Takes the sources `index.build` takes (a dataset split, `--images_dir`, `--list`, with
`--captions` for a corpus; or `--captions` alone) or a JSON list of ``{"file": PATH,
"captions": [...], "image_id": optional}``, embeds what is not indexed yet with the model
the index was built with, and appends it (`index.update`): atomic, as a build is.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import faiss

from index.args import (
    add_batch_size,
    add_collection_args,
    add_copy_images,
    add_faiss_threads,
    add_index_dir,
    add_precision,
    check_source_args,
    collection_items,
    collection_source,
)
from index.shards import collect_shards, embed_to_shards, write_corpus
from index.sources import read_caption_corpus
from index.store import check_built_with, load_index, read_manifest
from index.update import add_to_index, add_with_model, read_items
from vsepp.cli import add_log_level, add_model_dir, program, setup_logging
from vsepp.datasets.args import add_dataset_args, add_split_args, load_split_from_args
from vsepp.embed import embed_texts
from vsepp.model_dir import EncodersLike, load_encoders, require_cosine

log = logging.getLogger(__name__)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command line of `python -m index.add`."""
    p = argparse.ArgumentParser(
        prog="python -m index.add", description="Append images and captions to an index."
    )
    add_model_dir(p, help="exported model the index was built with")
    add_index_dir(p, "--index", help="index directory to append to (--index works too)")
    add_dataset_args(p, required=False)
    add_split_args(p, required=False)
    add_collection_args(p)
    p.add_argument(
        "--items", type=Path, help='JSON list of {"file", "captions": [...], "image_id"?}'
    )
    add_batch_size(p, help="images / captions per model call")
    add_precision(p)
    add_copy_images(
        p, help="copy (hard-link where possible) the image files into INDEX/images (to serve them)"
    )
    add_faiss_threads(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the recall measurement")
    add_log_level(p)
    args = p.parse_args(argv)
    check_source_args(p, args, captions_alone=True)
    if args.from_shards is not None:
        p.error("--from_shards is for index.build")
    return args


def add_collection(args: argparse.Namespace, encoders: EncodersLike) -> dict[str, Any]:
    """Embed the folder's or list's images that the index lacks, then append them."""
    index_dir = Path(args.index_dir)
    check_built_with(index_dir, read_manifest(index_dir), encoders.model_hash, encoders.embed_dim)
    require_cosine(encoders.manifest)
    loaded = load_index(index_dir)  # its records mapped: looked up, not held as a set

    def present(image_id: str) -> bool:
        return loaded.image_row(image_id) is not None or image_id in loaded.images_by_alias

    # No image source: only --captions, a corpus for an index of images alone.
    given = args.images_dir is not None or args.list is not None
    items = (i for i in collection_items(args) if not present(i.image_id)) if given else iter(())
    # The shards of this run live beside the index, on its file system, and go afterwards.
    shards = Path(tempfile.mkdtemp(prefix=f".{index_dir.name}.add-", dir=index_dir.parent))
    try:
        embed_to_shards(
            items,
            encoders,
            shards / "shards",
            source=collection_source(args),
            shard_size=args.shard_size,
            batch_size=args.batch_size,
            max_pixels=args.max_image_pixels,
        )
        if args.captions is not None:
            texts = read_caption_corpus(args.captions)
            write_corpus(shards / "shards", texts, embed_texts(encoders, texts))
        got = collect_shards(shards / "shards", copy_images=args.copy_images)
        return add_to_index(
            index_dir,
            got.image_vectors,
            got.images,
            got.caption_vectors,
            got.captions,
            expected_model_hash=encoders.model_hash,
            skipped_images=got.skipped,
            seed=args.seed,
        )
    finally:
        shutil.rmtree(shards, ignore_errors=True)


@program
def main(argv: Sequence[str] | None = None) -> int:
    """Run `python -m index.add`."""
    args = parse_args(argv)
    setup_logging(args.log_level)
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    encoders = load_encoders(args.model_dir, args.precision)
    if (
        args.images_dir is not None
        or args.list is not None
        or (args.items is None and (args.texts_path is None))
    ):
        manifest = add_collection(args, encoders)
    else:
        if args.items is not None:
            ids, files, caps = read_items(args.items)
        else:
            split = load_split_from_args(args, args.imgs_file_path or args.split)
            ids, files = list(split.image_ids), list(split.image_paths)
            caps = [split.captions_of(i) for i in range(len(ids))]
        manifest = add_with_model(
            encoders,
            args.index_dir,
            ids,
            files,
            caps,
            batch_size=args.batch_size,
            copy_images=args.copy_images,
            seed=args.seed,
        )
    log.info(
        "%s now holds %d images and %d captions",
        args.index_dir,
        manifest["images"]["count"],
        manifest["captions"]["count"],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
