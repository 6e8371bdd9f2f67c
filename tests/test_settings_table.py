"""docs/service.md's table of the server's settings names every field of
`service.config.Settings` and nothing else, so a new setting cannot go undocumented."""

from __future__ import annotations

import re
from pathlib import Path

from service.config import Settings

SERVICE_DOC = Path(__file__).resolve().parents[1] / "docs" / "service.md"


def documented(text: str) -> set[str]:
    """The `VSEPP_*` names in the first column of the settings table's rows in `text`."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("| `VSEPP_"):
            names |= set(re.findall(r"`(VSEPP_[A-Z0-9_]+)`", line.split("|")[1]))
    return names


def test_the_settings_table_lists_every_setting() -> None:
    fields = {f"VSEPP_{name.upper()}" for name in Settings.model_fields}
    table = documented(SERVICE_DOC.read_text(encoding="utf-8"))
    assert not fields - table, f"docs/service.md's settings table lacks {sorted(fields - table)}"
    assert not table - fields, (
        f"docs/service.md's settings table has unknown {sorted(table - fields)}"
    )


def test_a_row_taken_out_of_the_table_is_missed() -> None:
    """The check above is not vacuous: without the `VSEPP_MAX_K` row a setting is missing."""
    text = SERVICE_DOC.read_text(encoding="utf-8")
    without = "\n".join(
        line for line in text.splitlines() if not line.startswith("| `VSEPP_MAX_K`")
    )
    assert "VSEPP_MAX_K" in documented(text)
    assert "VSEPP_MAX_K" not in documented(without)
