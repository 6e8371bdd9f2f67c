"""Rewrite an index directory of the JSON format in the Arrow one (`python -m index.convert`).

    python -m index.convert --index_dir idx

An index written before "vsepp-index/2" keeps its records in images.json and captions.json,
which every load parses into Python objects (~75 s and ~3.5 GiB at 10M images). It still
loads as it is; converted, its records are memory-mapped Arrow columns. Atomic, as a build is:
the FAISS files and image copies are hard-linked, nothing is embedded again
(`index.store.convert_index_dir`).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from index.args import add_index_dir
from index.store import FORMAT, convert_index_dir
from vsepp.cli import add_log_level, program, setup_logging

log = logging.getLogger(__name__)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command line of `python -m index.convert`."""
    p = argparse.ArgumentParser(
        prog="python -m index.convert",
        description="Rewrite an index of the JSON format with its records as Arrow columns.",
    )
    add_index_dir(p, help="index directory to convert in place")
    add_log_level(p)
    return p.parse_args(argv)


@program
def main(argv: Sequence[str] | None = None) -> int:
    """Run `python -m index.convert`."""
    args = parse_args(argv)
    setup_logging(args.log_level)
    manifest = convert_index_dir(args.index_dir)
    if manifest is None:
        print(f"{args.index_dir} is already in the format {FORMAT}; nothing to do")
    else:
        print(f"converted {args.index_dir} to {FORMAT}: {manifest['images']['count']} images, "
              f"{manifest['captions']['count']} captions")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
