"""Build an index directory with an exported model: a dataset split, or your own images.

    python -m index.build --model_dir runs/model --images_path data/Flicker8k_Dataset \\
        --texts_path data/Flickr8k.token.txt --split test --index_dir indexes/flickr8k
    python -m index.build --model_dir runs/model --images_dir ~/Pictures --index_dir idx
    python -m index.build --model_dir runs/model --list photos.csv --captions notes.txt ...

A split goes to `index.collection.build_from_split`. A folder (`--images_dir`) or a list
file (`--list`, CSV/JSONL/Parquet) is embedded into shards on disk (`index.shards`:
bounded memory, `--resume` after a kill), then indexed (`build_from_shards`); so is
`--from_shards DIR`, shards made elsewhere. Unusable files are skipped and listed in the
manifest with their reason. The directory is written atomically: the previous index at
--index_dir stays whole until the new one is complete.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from collections.abc import Sequence
from typing import Any

import faiss

from index.budget import parse_size
from index.collection import RECALL_QUERIES, build_from_shards, build_from_split, require_cosine
from index.faiss_index import DEFAULT_PARAMS, INDEX_TYPES
from index.shards import embed_to_shards, write_corpus
from index.source_args import (
    add_collection_args,
    check_source_args,
    collection_items,
    collection_source,
    shards_of,
)
from index.sources import read_caption_corpus
from vsepp.cli import (
    add_batch_size,
    add_copy_images,
    add_faiss_threads,
    add_index_dir,
    add_log_level,
    add_model_dir,
    add_precision,
    at_least_one,
    program,
    setup_logging,
)
from vsepp.datasets.args import add_dataset_args, add_split_args, load_split_from_args
from vsepp.embed import embed_texts
from vsepp.model_dir import load_encoders, model_facts, read_model_manifest

log = logging.getLogger(__name__)


def _param(text: str) -> tuple[str, int | float]:
    """KEY=VALUE of --param, VALUE a number."""
    key, sep, value = text.partition("=")
    known = sorted({k for params in DEFAULT_PARAMS.values() for k in params})
    if not sep or key not in known:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=NUMBER with KEY one of {known}")
    try:
        number: int | float = int(value)
    except ValueError:
        try:
            number = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: {value!r} is not a number") from None
    return key, number


def _size(text: str) -> int:
    """A --max_index_memory size in bytes."""
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command line of `python -m index.build`."""
    p = argparse.ArgumentParser(
        prog="python -m index.build",
        description="Embed a dataset split, a folder or a list of images and write a FAISS "
        "index directory.",
    )
    add_model_dir(p, help="exported model (training.export)")
    add_index_dir(p, "--out", help="index directory to (re)write (--out works too)")
    add_dataset_args(p, required=False)
    add_split_args(p, required=False)
    add_collection_args(p)
    p.add_argument(
        "--index_type",
        default="auto",
        choices=("auto", *INDEX_TYPES),
        help="auto: exact (flat) up to 50k vectors per side, HNSW above",
    )
    p.add_argument(
        "--param",
        action="append",
        type=_param,
        default=[],
        metavar="KEY=VALUE",
        help="index parameter, repeatable: M, efConstruction, efSearch, nlist, nprobe, m, "
        "nbits, k_factor, niter, train_size, target_recall (0 = choose from the data)",
    )
    p.add_argument(
        "--max_index_memory",
        type=_size,
        default=None,
        metavar="SIZE",
        help="memory budget (e.g. 4G, 500M, 1.5GB) that picks both sides' index as autofaiss "
        "does: flat while it fits, then HNSW, then IVF-HNSW with SQ8/PQ codes in on-disk "
        "lists; vectors from shards are streamed, never all in memory (replaces "
        "--index_type/--param)",
    )
    add_batch_size(p)
    add_precision(p)
    add_copy_images(
        p, help="copy the image files into OUT/images (the service serves them from there)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of k-means, HNSW and recall")
    p.add_argument(
        "--recall_queries", type=at_least_one, default=RECALL_QUERIES, help="queries for recall@10"
    )
    add_faiss_threads(p)
    add_log_level(p)
    args = p.parse_args(argv)
    check_source_args(p, args)
    if args.max_index_memory is not None and (args.index_type != "auto" or args.param):
        p.error("--max_index_memory picks the index itself: drop --index_type / --param")
    return args


@program
def main(argv: Sequence[str] | None = None) -> int:
    """Run `python -m index.build`."""
    args = parse_args(argv)
    setup_logging(args.log_level)
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    split_given = args.texts_path is not None
    manifest = _build_split(args) if split_given else build_collection(args)
    log.info(
        "index %s: %d images (%s, recall@10 %.3f), %d captions (%s, recall@10 %.3f), %d skipped",
        args.index_dir,
        manifest["images"]["count"],
        manifest["images"]["index_type"],
        manifest["images"]["recall_at_10"],
        manifest["captions"]["count"],
        manifest["captions"]["index_type"],
        manifest["captions"]["recall_at_10"],
        len(manifest["skipped_images"]),
    )
    return 0


def _build_split(args: argparse.Namespace) -> dict[str, Any]:
    split = load_split_from_args(args, args.imgs_file_path or args.split)
    encoders = load_encoders(args.model_dir, args.precision)
    return build_from_split(
        split,
        encoders,
        args.index_dir,
        index_type=args.index_type,
        params=dict(args.param),
        batch_size=args.batch_size,
        copy_images=args.copy_images,
        seed=args.seed,
        recall_queries=args.recall_queries,
        source={
            "images_path": str(args.images_path),
            "texts_path": str(args.texts_path),
            "split_arg": str(args.imgs_file_path or args.split),
            "dataset": args.dataset,
            "model_dir": str(args.model_dir),
            # What the dataset reader dropped before embedding (--skip_incomplete).
            "split_skipped": dict(split.skipped),
        },
        model_facts=model_facts(encoders),
        max_index_memory=args.max_index_memory,
    )


def build_collection(args: argparse.Namespace) -> dict[str, Any]:
    """A folder, a list file or ready shards -> shards -> the index directory."""
    shards = shards_of(args)
    if args.from_shards is None:
        encoders = load_encoders(args.model_dir, args.precision)
        require_cosine(encoders.manifest)
        summary = embed_to_shards(
            collection_items(args),
            encoders,
            shards,
            source=collection_source(args),
            shard_size=args.shard_size,
            batch_size=args.batch_size,
            resume=args.resume,
            max_pixels=args.max_image_pixels,
        )
        print(summary.line())
        if args.captions is not None:
            texts = read_caption_corpus(args.captions)
            write_corpus(shards, texts, embed_texts(encoders, texts))
        facts = model_facts(encoders)
        model_hash = encoders.model_hash
    else:
        facts = None
        model_hash = str(read_model_manifest(args.model_dir)["content_hash"])
    manifest = build_from_shards(
        shards,
        args.index_dir,
        index_type=args.index_type,
        params=dict(args.param),
        copy_images=args.copy_images,
        seed=args.seed,
        recall_queries=args.recall_queries,
        source={"model_dir": str(args.model_dir)},
        extra={"model": facts} if facts else None,
        expected_model_hash=model_hash,
        max_index_memory=args.max_index_memory,
    )
    if args.from_shards is None and not args.keep_shards:
        shutil.rmtree(shards, ignore_errors=True)
    return manifest


if __name__ == "__main__":
    raise SystemExit(main())
