"""Build an index directory with an exported model: a dataset split, or your own images.

    python -m index.build --model_dir runs/model --images_path data/Flicker8k_Dataset \\
        --texts_path data/Flickr8k.token.txt --split test --index_dir indexes/flickr8k
    python -m index.build --model_dir runs/model --images_dir ~/Pictures --index_dir idx
    python -m index.build --model_dir runs/model --list photos.csv --captions notes.txt ...

The command line becomes a source, an index policy and the build options, and
`index.builder.build` does the rest: every source (a split, a folder `--images_dir`, a list
file `--list` (CSV/JSONL/Parquet), shards `--from_shards`) is embedded into shards on disk
(bounded memory, `--resume` after a kill), then indexed as `--index_type` or
`--max_index_memory` says. Unusable files are skipped and listed in the manifest with their
reason. The directory is written atomically: the previous index at --index_dir stays whole
until the new one is complete.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

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
from index.budget import parse_size
from index.builder import (
    RECALL_QUERIES,
    BuildOptions,
    FilesSource,
    IndexPolicy,
    ShardsSource,
    Source,
    SplitSource,
    build,
)
from index.duplicates import DEFAULT_THRESHOLD
from index.faiss_index import DEFAULT_PARAMS, INDEX_TYPES
from vsepp.cli import add_log_level, add_model_dir, at_least_one, program, setup_logging
from vsepp.datasets.args import add_dataset_args, add_split_args, load_split_from_args

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


def _cosine_or_off(text: str) -> float | None:
    """A --near_duplicates value: a cosine in (0, 1], or off."""
    if text == "off":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a cosine in (0, 1] or off") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{value}: a cosine threshold must be in (0, 1]")
    return value


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
    p.add_argument(
        "--near_duplicates",
        type=_cosine_or_off,
        default=DEFAULT_THRESHOLD,
        metavar="COSINE",
        help="images whose vectors are at least this close form a near-duplicate group, "
        "shown once by a search with collapse (a burst, an edited copy); 'off': no groups "
        f"(default {DEFAULT_THRESHOLD})",
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
    built = build(source_of(args), args.index_dir, policy_of(args), options_of(args),
                  args.model_dir)  # fmt: skip
    if built.embedded is not None:
        print(built.embedded.line())
    manifest = built.manifest
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


def source_of(args: argparse.Namespace) -> Source:
    """The one source the command line names."""
    if args.from_shards is not None:
        return ShardsSource(Path(args.from_shards))
    if args.texts_path is None:
        return FilesSource(lambda: collection_items(args), collection_source(args), args.captions)
    split_arg = args.imgs_file_path or args.split
    split = load_split_from_args(args, split_arg)
    return SplitSource(
        split,
        {
            "images_path": str(Path(args.images_path).absolute()),
            "texts_path": str(Path(args.texts_path).absolute()),
            "split_arg": str(split_arg),
            "dataset": args.dataset,
            # What the dataset reader dropped before embedding (--skip_incomplete).
            "split_skipped": dict(split.skipped),
        },
    )


def policy_of(args: argparse.Namespace) -> IndexPolicy:
    """--index_type with its --param, or --max_index_memory."""
    return IndexPolicy(args.index_type, dict(args.param), args.max_index_memory)


def options_of(args: argparse.Namespace) -> BuildOptions:
    """Everything else of the command line that shapes the run."""
    return BuildOptions(
        copy_images=args.copy_images,
        seed=args.seed,
        recall_queries=args.recall_queries,
        batch_size=args.batch_size,
        precision=args.precision,
        shards_dir=args.shards_dir,
        shard_size=args.shard_size,
        resume=args.resume,
        keep_shards=args.keep_shards,
        max_pixels=args.max_image_pixels,
        near_duplicates=args.near_duplicates,
    )


if __name__ == "__main__":
    raise SystemExit(main())
