"""The flags of the index programs (`index.build`, `index.add`, `index.beam_embed`,
`index.query`, `index.remove`, `index.evaluate`): the index directory, the sources (a dataset
split, a folder, a list, shards) and how images are embedded.

One home for them, so every program takes the same thing under the same name.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from index.shards import SHARD_SIZE
from index.sources import SourceImage, read_list, walk_images_dir
from vsepp.cli import at_least_one
from vsepp.images import DEFAULT_MAX_PIXELS
from vsepp.precision import CHOICES


def add_batch_size(p: argparse.ArgumentParser, help: str = "images per model call") -> None:
    """--batch_size of the programs that embed."""
    p.add_argument("--batch_size", type=at_least_one, default=32, help=help)


def add_faiss_threads(p: argparse.ArgumentParser) -> None:
    """--threads of the programs that build or search FAISS indexes."""
    p.add_argument("--threads", type=int, default=0, help="FAISS threads (0: all cores)")


def add_copy_images(p: argparse.ArgumentParser, help: str) -> None:
    """--copy_images / --no-copy_images of the programs that write an index directory."""
    p.add_argument("--copy_images", action=argparse.BooleanOptionalAction, default=True, help=help)


def add_index_dir(p: argparse.ArgumentParser, *aliases: str, help: str) -> None:
    """--index_dir (plus the program's older spellings, kept as aliases)."""
    p.add_argument("--index_dir", *aliases, dest="index_dir", type=Path, required=True, help=help)


def add_precision(p: argparse.ArgumentParser) -> None:
    """--precision of the image encoder, the same in every program that embeds."""
    p.add_argument(
        "--precision",
        default="auto",
        choices=CHOICES,
        help="bfloat16: the image encoder's convolutions and matrix products in bfloat16 "
        "(fast on CPUs with AVX512_BF16 or AMX, emulated and slower elsewhere); auto (the "
        "default): bfloat16 where the CPU has AVX512_BF16 or AMX, float32 elsewhere",
    )


def add_collection_args(p: argparse.ArgumentParser) -> None:
    """--images_dir, --list, --captions, --from_shards and the shard flags."""
    add_own_source_args(p, "your own images (instead of a dataset split)")
    g = p.add_argument_group(
        "shards (every source is embedded into them first; --resume, --shard_size and "
        "--max_image_pixels apply to a dataset split too)"
    )
    g.add_argument("--from_shards", type=Path, help="index shards made earlier (or elsewhere)")
    g.add_argument(
        "--shards_dir", type=Path, help="where the shards go (default: INDEX_DIR.shards)"
    )
    g.add_argument("--keep_shards", action="store_true", help="keep the shards after the build")


def add_own_source_args(p: argparse.ArgumentParser, title: str) -> argparse._ArgumentGroup:
    """--images_dir, --list, --captions, --resume, --shard_size and --max_image_pixels: the
    flags of every program that embeds a folder or a list into shards (its group)."""
    g = p.add_argument_group(title)
    g.add_argument("--images_dir", type=Path, help="every image under this folder, recursively")
    g.add_argument(
        "--list",
        type=Path,
        help="CSV, JSONL or Parquet with a 'path' column; optional 'image_id', 'captions'; "
        "other columns are kept as metadata",
    )
    g.add_argument(
        "--captions",
        type=Path,
        help="captions tied to no image (JSONL, plain text or a token file), for "
        "image-to-caption search",
    )
    g.add_argument(
        "--resume", action="store_true", help="go on from the complete shards of a killed run"
    )
    g.add_argument("--shard_size", type=at_least_one, default=SHARD_SIZE, help="images per shard")
    g.add_argument(
        "--max_image_pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help="larger images are skipped as decompression bombs",
    )
    return g


def check_source_args(
    p: argparse.ArgumentParser, args: argparse.Namespace, *, captions_alone: bool = False
) -> None:
    """Exactly one source (or, with `captions_alone`, only --captions); the dataset flags
    together."""
    given = [
        name
        for name, value in (
            ("a dataset split (--texts_path)", args.texts_path),
            ("--images_dir", args.images_dir),
            ("--list", args.list),
            ("--from_shards", args.from_shards),
            ("--items", getattr(args, "items", None)),
        )
        if value is not None
    ]
    if captions_alone and not given and args.captions is not None:
        return
    if len(given) != 1:
        what = " and ".join(given) if given else "none"
        p.error(
            "give one source: a dataset split (--images_path --texts_path --split/...), "
            f"--images_dir, --list or --from_shards (given: {what})"
        )
    if args.texts_path is not None:
        if args.images_path is None:
            p.error("--texts_path needs --images_path")
        if (args.imgs_file_path is None) == (args.split is None):
            p.error("give exactly one of --imgs_file_path and --split")
    if args.captions is not None and args.texts_path is not None:
        p.error("--captions goes with --images_dir or --list (a split has its own captions)")


def collection_items(args: argparse.Namespace) -> Iterator[SourceImage]:
    """The images of --images_dir or --list, lazily."""
    if args.images_dir is not None:
        return walk_images_dir(args.images_dir)
    return read_list(args.list)


def collection_source(args: argparse.Namespace) -> dict[str, Any]:
    """What the manifest (and a resumed run's check) records of the source."""
    if args.images_dir is not None:
        return {"kind": "images_dir", "path": str(Path(args.images_dir).absolute())}
    if args.list is not None:
        return {"kind": "list", "path": str(Path(args.list).absolute())}
    return {"kind": "captions", "path": str(Path(args.captions).absolute())}
