"""The Beam pipeline of `index.beam_embed`: shards of a source embedded by parallel workers.

```
source (launcher) -> shard tasks (n, images) --Hash--> (sha256, (position, image_id, n))
                           |                                 | GroupByKey: the first of
                           |                                 v each sha256 is the original
                           +------ CoGroupByKey(n) <---- duplicates of shard n
                                        |
                                        v Embed (encoders loaded once per worker):
                                 shard-n .npy, .captions.npy, .json (index.shards.ShardWriter)
```

Duplicates need to know every earlier file of the source, which a worker embedding shard n
does not see; the cheap Hash pass (read, sha256, the decoder's header checks) settles them
first, with the in-process rule (the first decodable file with those bytes is the
original), so the shards equal `embed_to_shards`' byte for byte in their .json. Files are
read twice (hashed, then embedded); the model's work dominates.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import (
    DirectOptions,
    PipelineOptions,
    StandardOptions,
    WorkerOptions,
    _BeamArgumentParser,
)

from index.args import collection_items, collection_source
from index.shards import (
    ShardsError,
    ShardWriter,
    Summary,
    count_shard,
    finish_shards,
    prepare_file,
    prepared,
    read_shards,
    shard_name,
    start_shards,
    write_corpus,
)
from index.sources import SourceImage, read_caption_corpus
from vsepp.embed import embed_texts
from vsepp.model_dir import EncodersLike, jpeg_min_side, load_encoders, read_model_manifest
from vsepp.precision import resolve_precision

log = logging.getLogger(__name__)

DEFAULT_RUNNER = "DirectRunner"
# The local runner's default: worker processes on this machine, one per core here.
LOCAL_WORKERS = 2

Task = tuple[int, list[SourceImage]]  # a shard's number and its source images, in order
Hashed = tuple[str, tuple[int, str, int]]  # sha256, (source position, image_id, shard)


def pipeline_options(beam_argv: Sequence[str]) -> PipelineOptions:
    """Beam's options from the flags this program does not take; unknown flags are an error
    (Beam would drop them with a warning), the local runner runs LOCAL_WORKERS processes."""
    options = PipelineOptions(list(beam_argv))
    # The parser Beam's own get_all_options() uses, to find the flags it would drop.
    parser = _BeamArgumentParser(add_help=False, allow_abbrev=False)
    for cls in _option_classes(PipelineOptions):
        cls._add_argparse_args(parser)
    _, unknown = parser.parse_known_args(list(beam_argv))
    if unknown:
        raise ValueError(
            f"unknown flags {' '.join(unknown)}: neither index.beam_embed's nor Beam's "
            "pipeline options (python -m index.beam_embed --help)"
        )
    if "--default_sdk_harness_log_level" not in " ".join(beam_argv):
        # The workers' own INFO lines (bundle bookkeeping) would drown the program's.
        options.view_as(WorkerOptions).default_sdk_harness_log_level = "WARNING"
    standard = options.view_as(StandardOptions)
    standard.runner = standard.runner or DEFAULT_RUNNER
    if standard.runner in ("DirectRunner", "direct"):
        direct = options.view_as(DirectOptions)
        given = " ".join(beam_argv)
        if "--direct_num_workers" not in given:
            direct.direct_num_workers = LOCAL_WORKERS
        if "--direct_running_mode" not in given:
            direct.direct_running_mode = "multi_processing"
    return options


def _option_classes(base: type[PipelineOptions]) -> Iterator[type[PipelineOptions]]:
    cls: type[PipelineOptions]
    for cls in base.__subclasses__():
        yield cls
        yield from _option_classes(cls)


def hash_shard(
    task: Task, shard_size: int, max_pixels: int, min_side: int | None
) -> Iterator[Hashed]:
    """(sha256, (position, image_id, shard)) of every file of the shard the decoder takes."""
    number, items = task
    for i, item in enumerate(items):
        _, digest, _, _, reason, _ = prepare_file(os.fsencode(item.path), max_pixels, min_side)
        if not reason:
            yield digest.decode(), (number * shard_size + i, item.image_id, number)


def duplicates(group: tuple[str, Iterable[tuple[int, str, int]]]) -> Iterator[tuple[int, Any]]:
    """(shard, (image_id, original's image_id)) for every later file with the same bytes."""
    _, files = group
    first, *later = sorted(files)
    for _, image_id, number in later:
        yield number, (image_id, first[1])


class _WithEncoders(beam.DoFn):
    """A DoFn whose worker loads the exported encoders once, in setup()."""

    def __init__(self, model_dir: str, precision: str, root: str) -> None:
        self.model_dir, self.precision, self.root = model_dir, precision, Path(root)
        self.encoders: EncodersLike | None = None

    def setup(self) -> None:
        self.encoders = load_encoders(self.model_dir, self.precision)


class EmbedShard(_WithEncoders):
    """Decode, embed and write one shard (its .json last), duplicates as settled by Hash."""

    def __init__(
        self, model_dir: str, precision: str, root: str, batch_size: int, max_pixels: int
    ) -> None:
        super().__init__(model_dir, precision, root)
        self.batch_size, self.max_pixels = batch_size, max_pixels

    def process(self, element: tuple[int, dict[str, list[Any]]]) -> Iterator[int]:
        number, joined = element
        if not joined["task"]:
            return  # duplicates that point into a shard complete before (a resumed run)
        (items,) = joined["task"]
        originals = dict(joined["duplicates"])
        assert self.encoders is not None, "setup() loads the encoders"
        writer = ShardWriter(self.encoders, self.root, number, self.batch_size)
        min_side = jpeg_min_side(self.encoders.manifest)
        for item, facts in prepared(items, self.max_pixels, min_side):
            writer.take(
                item,
                facts,
                lambda _digest, image_id: originals.get(image_id, image_id),
            )
        writer.write()
        yield number


class EmbedCorpus(_WithEncoders):
    """Embed the caption corpus tied to no image and write it beside the shards."""

    def process(self, texts: list[str]) -> Iterator[int]:
        assert self.encoders is not None, "setup() loads the encoders"
        write_corpus(self.root, texts, embed_texts(self.encoders, texts))
        yield len(texts)


def run(args: argparse.Namespace, beam_argv: Sequence[str]) -> Summary:
    """Embed the source of `args` into shards under args.out_dir with Beam; the summary."""
    options = pipeline_options(beam_argv)
    started = time.perf_counter()
    manifest = read_model_manifest(args.model_dir)
    root = Path(args.out_dir).absolute()
    items = list(collection_items(args))  # a source error stops here, before any shard
    size = int(args.shard_size)
    count = (len(items) + size - 1) // size
    fresh = not root.exists()
    done = start_shards(
        root,
        str(manifest["content_hash"]),
        int(manifest["embed_dim"]),
        size,
        collection_source(args),
        args.resume,
    )
    if any(s.number >= count for s in done):
        raise ShardsError(f"{root} holds more shards than the source makes ({count})")
    finished = {s.number for s in done}
    tasks = [(n, items[n * size : (n + 1) * size]) for n in range(count) if n not in finished]
    # The originals already in complete shards (a resumed run): they were first there.
    known = []
    for shard in done:
        position = {image_id: shard.number * size + i for i, image_id in enumerate(shard.seen)}
        known += [(r["sha256"], (position[r["image_id"]], r["image_id"], shard.number))
                  for r in shard.images]  # fmt: skip
    texts = read_caption_corpus(args.captions) if args.captions is not None else None
    # "auto" decided once, here, so that every worker embeds in the same precision.
    model_dir = str(Path(args.model_dir).absolute())
    precision = resolve_precision(args.precision)
    log.info("%d images in %d shards (%d to embed) with %s", len(items), count, len(tasks),
             options.view_as(StandardOptions).runner)  # fmt: skip
    try:
        with beam.Pipeline(options=options) as p:
            shards = p | "Shards" >> beam.Create(tasks)
            hashed = (
                shards
                | "Spread" >> beam.Reshuffle()
                | "Hash"
                >> beam.FlatMap(hash_shard, size, args.max_image_pixels, jpeg_min_side(manifest))
            )
            earlier = p | "Complete" >> beam.Create(known)
            dups = (
                (hashed, earlier)
                | "All" >> beam.Flatten()
                | "BySha256" >> beam.GroupByKey()
                | "Duplicates" >> beam.FlatMap(duplicates)
            )
            _ = (
                {"task": shards, "duplicates": dups}
                | "ByShard" >> beam.CoGroupByKey()
                | "Embed"
                >> beam.ParDo(
                    EmbedShard(
                        model_dir, precision, str(root), args.batch_size, args.max_image_pixels
                    )
                )
            )
            if texts is not None:
                _ = (
                    p
                    | "Corpus" >> beam.Create([texts])
                    | "EmbedCorpus" >> beam.ParDo(EmbedCorpus(model_dir, precision, str(root)))
                )
    except (ValueError, OSError):
        if fresh:
            shutil.rmtree(root, ignore_errors=True)
        raise
    for n in range(count):
        if not (root / shard_name(n, ".json")).is_file():
            raise ShardsError(f"{root / shard_name(n, '.json')}: the pipeline did not write it")
    finish_shards(root, count)
    summary = Summary(shards=count)
    for shard in read_shards(root):
        count_shard(summary, shard, resumed=True)
    summary.seconds = time.perf_counter() - started
    log.info("%s: %s", root, summary.line())
    return summary
