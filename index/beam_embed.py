"""Embed a folder or a list into shards on Apache Beam: many workers, the same shards.

    python -m index.beam_embed --model_dir runs/model --images_dir ~/Pictures --out_dir shards
    python -m index.build --model_dir runs/model --from_shards shards --index_dir idx

It reads the sources `index.build` reads (`index.sources`), cuts them into shards exactly as
`index.shards.embed_to_shards` does (a shard closes every `--shard_size` source images), and
each worker decodes with the one decoder and embeds with the exported encoders, loaded once
per worker, writing each shard with the one shard writer (`index.shards.ShardWriter`). The
runner is Beam's DirectRunner in multi-processing mode with 2 workers unless `--runner` (and
Beam's other pipeline options, passed through as they are) say otherwise: DataflowRunner,
FlinkRunner or SparkRunner run it on a cluster, whose workers must all see --out_dir (a
shared file system: the shard files are written with atomic renames, which object stores
do not offer). Needs the `beam` extra (pip install '.[beam]'); the pipeline itself is in
`index.beam_pipeline`.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from index.args import add_batch_size, add_own_source_args, add_precision
from vsepp.cli import UsageError, add_log_level, add_model_dir, program, setup_logging
from vsepp.model_dir import read_model_manifest, require_cosine

log = logging.getLogger(__name__)


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """This program's flags, and the rest: Beam's pipeline options."""
    p = argparse.ArgumentParser(
        prog="python -m index.beam_embed",
        description="Embed a folder or a list of images into index shards on Apache Beam "
        "(index.build --from_shards turns them into an index). Flags not listed here are "
        "Beam's pipeline options (--runner, --direct_num_workers, --project, ...).",
        # No prefixes: a Beam flag must never be taken for an abbreviation of one of ours.
        allow_abbrev=False,
    )
    add_model_dir(p, help="exported model (training.export)")
    p.add_argument("--out_dir", type=Path, required=True, help="the shards directory to write")
    add_own_source_args(p, "the images")
    add_batch_size(p)
    add_precision(p)
    add_log_level(p)
    args, rest = p.parse_known_args(argv)
    if (args.images_dir is None) == (args.list is None):
        p.error("give one source: --images_dir or --list")
    return args, rest


@program
def main(argv: Sequence[str] | None = None) -> int:
    """Run `python -m index.beam_embed`."""
    args, beam_argv = parse_args(argv)
    setup_logging(args.log_level)
    if args.log_level != "DEBUG":
        logging.getLogger("apache_beam").setLevel(logging.WARNING)
    try:
        from index import beam_pipeline
    except ImportError as e:
        if e.name is None or not e.name.startswith("apache_beam"):
            raise
        raise UsageError(
            "index.beam_embed needs Apache Beam: pip install '.[beam]' (or apache-beam)"
        ) from e
    require_cosine(read_model_manifest(args.model_dir))
    summary = beam_pipeline.run(args, beam_argv)
    print(summary.line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
