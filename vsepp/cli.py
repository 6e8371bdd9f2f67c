"""What every program shares: the log flag and format, --model_dir, and the exit style.

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
from typing import Protocol

from vsepp.model_dir import EncoderFailure

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


def at_least_one(text: str) -> int:
    """argparse type of a count (batch, shard, queries, k): an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value


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
