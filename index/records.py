"""The image records of an index as columns: what filters read and results carry.

`image_table(records)` is one `pyarrow.Table`, a row per image in index order, with the
built-in columns of `BUILT_IN` and a list file's own columns as ``meta.NAME`` (Arrow infers
their types). `filter_fields(table)` names what a filter may use: the built-in fields and the
list's columns under their own names (a list column named like a built-in one is reached as
``meta.NAME``).
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from typing import Any, Protocol

import pyarrow as pa

from index.filters import Field, kind_of

META = "meta."
# Built-in fields: name -> Arrow type. `folder` is the id's directory ("" at the top).
BUILT_IN: dict[str, pa.DataType] = {
    "image_id": pa.string(),
    "folder": pa.string(),
    "width": pa.int64(),
    "height": pa.int64(),
}


class RecordLike(Protocol):
    """What a table is made of: `index.store.ImageRecord`."""

    @property
    def image_id(self) -> str: ...
    @property
    def width(self) -> int | None: ...
    @property
    def height(self) -> int | None: ...
    @property
    def meta(self) -> dict[str, Any] | None: ...


def folder_of(image_id: str) -> str:
    """The directory part of an image id (POSIX), "" for an image at the top."""
    return posixpath.dirname(image_id)


def image_table(records: Sequence[RecordLike]) -> pa.Table:
    """The records as columns (see the module doc)."""
    columns: dict[str, pa.Array] = {
        "image_id": pa.array([r.image_id for r in records], pa.string()),
        "folder": pa.array([folder_of(r.image_id) for r in records], pa.string()),
        "width": pa.array([r.width for r in records], pa.int64()),
        "height": pa.array([r.height for r in records], pa.int64()),
    }
    names = sorted({k for r in records if r.meta for k in r.meta})
    if names:
        meta = pa.Table.from_pylist([{k: (r.meta or {}).get(k) for k in names} for r in records])
        for name in names:
            columns[META + name] = meta.column(name).combine_chunks()
    return pa.table(columns)


def filter_fields(table: pa.Table) -> dict[str, Field]:
    """The fields a filter may name on `table`: name -> Field."""
    fields: dict[str, Field] = {}
    for column in table.schema:
        kind = kind_of(column.type)
        if kind is None:
            continue
        fields[column.name] = Field(column.name, kind, column.name)
    for column in table.schema:
        if column.name.startswith(META):
            short = column.name[len(META) :]
            if short not in fields and column.name in fields:
                fields[short] = Field(short, fields[column.name].kind, column.name)
    return fields
