"""README's table of the server's settings names every field of `service.config.Settings`
and nothing else, so a new setting cannot go undocumented."""

from __future__ import annotations

import re
from pathlib import Path

from service.config import Settings

README = Path(__file__).resolve().parents[1] / "README.md"


def documented() -> set[str]:
    """The `VSEPP_*` names in the first column of README's settings table."""
    names: set[str] = set()
    for line in README.read_text(encoding="utf-8").splitlines():
        if line.startswith("| `VSEPP_"):
            names |= set(re.findall(r"`(VSEPP_[A-Z0-9_]+)`", line.split("|")[1]))
    return names


def test_the_settings_table_lists_every_setting() -> None:
    fields = {f"VSEPP_{name.upper()}" for name in Settings.model_fields}
    table = documented()
    assert not fields - table, f"README.md's settings table lacks {sorted(fields - table)}"
    assert not table - fields, f"README.md's settings table has unknown {sorted(table - fields)}"
