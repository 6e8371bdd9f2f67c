"""The conventions every program shares (vsepp.cli) and the console commands of the install."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

import pytest

from vsepp.cli import USAGE_ERROR, UsageError, program

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def test_input_errors_end_with_one_line_and_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    @program
    def missing(argv: object = None) -> int:
        raise FileNotFoundError("captions file data/x.txt does not exist")

    @program
    def refused(argv: object = None) -> int:
        raise UsageError("--joint_space 1024 but the model has 64")

    assert missing([]) == USAGE_ERROR
    assert capsys.readouterr().err == "error: captions file data/x.txt does not exist\n"
    assert refused([]) == USAGE_ERROR
    assert "--joint_space 1024" in capsys.readouterr().err


def test_a_bug_still_shows_its_traceback() -> None:
    @program
    def buggy(argv: object = None) -> int:
        raise TypeError("a bug")

    with pytest.raises(TypeError):
        buggy([])


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_console_commands_resolve_and_answer_help(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    module, _, function = SCRIPTS[name].partition(":")
    main = getattr(importlib.import_module(module), function)
    argv = ["build", "--help"] if name == "vsepp-index" else ["--help"]
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "usage:" in out and "--log_level" in out, name
