"""`vsepp-index COMMAND ...` (or `python -m index COMMAND ...`): the index programs in one.

COMMAND is build, add, remove, query, evaluate, beam_embed or convert; the rest of the line goes to
that program, exactly as `python -m index.COMMAND` takes it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from index import add, beam_embed, build, convert, evaluate, query, remove
from vsepp.cli import USAGE_ERROR

COMMANDS: dict[str, Callable[[Sequence[str] | None], int]] = {
    "build": build.main,
    "add": add.main,
    "query": query.main,
    "evaluate": evaluate.main,
    "remove": remove.main,
    "beam_embed": beam_embed.main,
    "convert": convert.main,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the program that the first word names (each has the shared exit style)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in COMMANDS:
        given = f"unknown command {args[0]!r}; " if args and args[0] not in ("-h", "--help") else ""
        print(f"usage: vsepp-index {{{','.join(COMMANDS)}}} ...\n{given}", file=sys.stderr)
        return 0 if args[:1] in (["-h"], ["--help"]) else USAGE_ERROR
    return COMMANDS[args[0]](args[1:])


if __name__ == "__main__":
    raise SystemExit(main())
