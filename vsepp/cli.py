"""What every program shares: the log flag and format, path flags, and the exit style.

Each program is a `main(argv=None) -> int` decorated with `@program`, the console entry
point and `python -m` alike: a problem with the user's input (a missing file, a bad value,
a model that does not fit the index) ends it with one line on stderr naming the problem and
exit status 2, as argparse does for a bad flag; a bug still shows its traceback.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from vsepp.model_dir import EncoderFailure
from vsepp.precision import CHOICES

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Exit status of a run refused for its input (argparse uses the same for bad flags).
USAGE_ERROR = 2

log = logging.getLogger(__name__)


def add_log_level(p: argparse.ArgumentParser, default: str = "INFO") -> None:
    """--log_level, the same in every program."""
    p.add_argument("--log_level", default=default, choices=LOG_LEVELS, help="logging threshold")


def add_model_dir(p: argparse.ArgumentParser, *aliases: str, help: str) -> None:
    """--model_dir (plus the program's older spellings, kept as aliases)."""
    p.add_argument("--model_dir", *aliases, dest="model_dir", required=True, help=help)


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


def at_least_one(text: str) -> int:
    """argparse type of a count (batch, shard, queries, k): an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value


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


def setup_logging(level: str = "INFO") -> None:
    """One log format for every program, on stderr."""
    logging.basicConfig(level=getattr(logging, level), format=LOG_FORMAT, datefmt="%H:%M:%S")


class UsageError(Exception):
    """The program cannot do what it was asked with this input; the message says why."""


def run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run a program's `main`, turning input errors into one line and exit status 2."""
    try:
        return main(argv)
    except (UsageError, OSError, ValueError) as e:
        # The libraries raise these with a message that names the file, line or field.
        log.debug("stopped by", exc_info=True)
        print(f"error: {e}", file=sys.stderr)
        return USAGE_ERROR
    except EncoderFailure as e:
        # Not the input's fault: exit 1 as for any failure, but in one line that names it.
        log.debug("stopped by", exc_info=True)
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


class Program(Protocol):
    """A program's `main`: the command line (sys.argv[1:] when None) in, exit status out."""

    def __call__(self, argv: Sequence[str] | None = None) -> int: ...


def program(main: Callable[[Sequence[str] | None], int]) -> Program:
    """Give a program's `main` the shared exit style (see `run`)."""

    @functools.wraps(main)
    def wrapped(argv: Sequence[str] | None = None) -> int:
        return run(main, argv)

    return wrapped
