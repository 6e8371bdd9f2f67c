"""The records of an index directory as Arrow IPC files, memory-mapped, and the views over
them that `index.store.LoadedIndex` hands out.

```
images.arrow    the image table of `index.records` (image_id, path, width, height, aliases,
                source, folder, taken_at, ..., meta.NAME) and two lookup columns:
                  id_order       int64: the rows in the order of their image_id (UTF-8
                                 bytes), for a binary search instead of a dict of every id
                  caption_start  int64: where the image's captions start in by_image
captions.arrow  caption_id, image_row (int64, -1: tied to no image), text, and
                  by_image       int64: the caption rows grouped by image row (stable;
                                 the corpus, row -1, first); image i's captions are
                                 by_image[caption_start[i]:caption_start[i + 1]]
```

Arrow IPC file format (Feather v2), uncompressed, one record batch where the columns allow:
a reader maps the file and reads the columns in place (`read_table`), with no Python object
per row and pages that several processes share. The lookup columns are computed at write time
(`with_lookup_columns`) and, for an index in the JSON format of before, at load.
"""

from __future__ import annotations

import bisect
import datetime as dt
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, overload

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from index.records import (
    BUILT_IN,
    CAPTURE_FIELDS,
    META,
    TIMESTAMP,
    CaptionRecord,
    ImageRecord,
)

ID_ORDER = "id_order"
CAPTION_START = "caption_start"
BY_IMAGE = "by_image"
LOOKUP_COLUMNS = (ID_ORDER, CAPTION_START)
CAPTION_COLUMNS: dict[str, pa.DataType] = {
    "caption_id": pa.large_string(),
    "image_row": pa.int64(),
    "text": pa.large_string(),
}
_BATCH = 65_536  # rows turned into Python objects at a time when iterating
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def python_values(array: pa.Array | pa.ChunkedArray) -> list[Any]:
    """An Arrow array's values as Python objects, timestamps as ISO 8601 text (what JSON
    holds of them, as `datetime.isoformat` writes them).

    The records' timestamps (timestamp[us, UTC]) go through their integer microseconds:
    Arrow's own conversion makes a datetime with a zoneinfo per value, slower, and a
    service builds a page of results per request.
    """
    if array.type == TIMESTAMP:
        micros = array.cast(pa.int64()).to_pylist()
        return [None if m is None else (_EPOCH + dt.timedelta(microseconds=m)).isoformat()
                for m in micros]  # fmt: skip
    values = array.to_pylist()
    if pa.types.is_timestamp(array.type):
        return [None if v is None else v.isoformat() for v in values]
    return values


class RecordsFileError(ValueError):
    """A records file that cannot be used; the message names the file and column."""


# --------------------------------------------------------------------------- writing


def caption_table(records: Sequence[CaptionRecord]) -> pa.Table:
    """Caption records as the columns of captions.arrow (without the lookup column)."""
    return pa.table(
        {
            "caption_id": pa.array([r.caption_id for r in records], pa.large_string()),
            "image_row": pa.array([r.image_row for r in records], pa.int64()),
            "text": pa.array([r.text for r in records], pa.large_string()),
        }
    )


def numpy_column(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """An int64 column without nulls as numpy: the mapped buffer itself when in one chunk."""
    if isinstance(column, pa.ChunkedArray):
        if column.num_chunks == 1:
            column = column.chunk(0)
        elif column.num_chunks == 0:
            return np.zeros(0, np.int64)
        else:
            return np.concatenate([c.to_numpy(zero_copy_only=False) for c in column.chunks])
    return column.to_numpy(zero_copy_only=column.null_count == 0)


def with_lookup_columns(images: pa.Table, captions: pa.Table) -> tuple[pa.Table, pa.Table]:
    """The tables with their lookup columns (see the module doc), computed afresh."""
    images = images.drop_columns([c for c in LOOKUP_COLUMNS if c in images.column_names])
    captions = captions.drop_columns([BY_IMAGE] if BY_IMAGE in captions.column_names else [])
    order = (
        pc.sort_indices(images.column("image_id")) if images.num_rows else pa.array([], pa.uint64())
    )
    rows = numpy_column(captions.column("image_row"))
    by_image = np.argsort(rows, kind="stable").astype(np.int64)
    start = np.searchsorted(rows[by_image], np.arange(images.num_rows), side="left")
    images = images.append_column(ID_ORDER, pa.array(np.asarray(order, np.int64), pa.int64()))
    images = images.append_column(CAPTION_START, pa.array(start.astype(np.int64), pa.int64()))
    captions = captions.append_column(BY_IMAGE, pa.array(by_image, pa.int64()))
    return images, captions


def duplicate_id(images: pa.Table) -> str | None:
    """An image_id that appears more than once in `images` (with its id_order), or None."""
    ids = images.column("image_id")
    if images.num_rows < 2:
        return None
    in_order = ids.take(images.column(ID_ORDER)).combine_chunks()
    same = pc.equal(in_order.slice(1), in_order.slice(0, len(in_order) - 1))
    hit = pc.index(same, True).as_py()
    return None if hit < 0 else str(in_order[hit].as_py())


def write_table(path: Path, table: pa.Table) -> None:
    """`table` as an uncompressed Arrow IPC file (mappable), in as few batches as it can."""
    table = table.combine_chunks()
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


# --------------------------------------------------------------------------- reading


def read_table(path: Path, required: Mapping[str, pa.DataType], *, validate: bool) -> pa.Table:
    """The table of an Arrow IPC file, memory-mapped (its columns stay on the file's pages),
    with `required` columns of their types; RecordsFileError naming the file otherwise."""
    try:
        source = pa.memory_map(str(path), "r")
        table = pa.ipc.open_file(source).read_all()
    except (pa.ArrowException, OSError) as e:
        raise RecordsFileError(f"{path}: not a readable Arrow IPC file ({e})") from e
    for name, type_ in required.items():
        if name not in table.column_names:
            raise RecordsFileError(f"{path}: no column {name!r}")
        if table.schema.field(name).type != type_:
            raise RecordsFileError(
                f"{path}: column {name!r} is {table.schema.field(name).type}, expected {type_}"
            )
    try:
        table.validate(full=validate)
    except pa.ArrowException as e:
        raise RecordsFileError(f"{path}: corrupt Arrow data ({e})") from e
    return table


def check_index_column(path: Path, table: pa.Table, name: str, low: int, high: int) -> None:
    """Every value of int64 column `name` within low..high and not null (they index rows)."""
    column = table.column(name)
    if column.null_count:
        raise RecordsFileError(f"{path}: column {name!r} has nulls")
    if len(column):
        bounds = pc.min_max(column).as_py()
        if bounds["min"] < low or bounds["max"] > high:
            raise RecordsFileError(
                f"{path}: column {name!r} holds {bounds['min']}..{bounds['max']}, "
                f"outside {low}..{high}"
            )


# --------------------------------------------------------------------------- views


T = TypeVar("T")


class ColumnView(Sequence[T]):
    """A read-only sequence over one Arrow column: len, index, slice (a list), iteration
    (in batches), equality with any sequence. Values are made when asked for."""

    def __init__(self, column: pa.ChunkedArray, decode: Callable[[Any], T] | None = None):
        self._column = column
        self._decode = decode

    def __len__(self) -> int:
        return len(self._column)

    @overload
    def __getitem__(self, index: int) -> T: ...
    @overload
    def __getitem__(self, index: slice) -> list[T]: ...
    def __getitem__(self, index: int | slice) -> T | list[T]:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step == 1:
                return self._values(self._column.slice(start, max(stop - start, 0)))
            return [self[i] for i in range(start, stop, step)]
        i = int(index)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"row {index} out of range 0..{len(self) - 1}")
        value = self._column[i].as_py()
        return self._decode(value) if self._decode and value is not None else value

    def take(self, rows: np.ndarray) -> list[T]:
        """The values of `rows` (int64), in their order: one Arrow take, not one scalar per
        row."""
        return self._values(self._column.take(pa.array(rows, pa.int64())))

    def _values(self, column: pa.ChunkedArray) -> list[T]:
        values = column.to_pylist()
        if self._decode:
            return [None if v is None else self._decode(v) for v in values]  # type: ignore[misc]
        return values

    def __iter__(self) -> Iterator[T]:
        for start in range(0, len(self), _BATCH):
            yield from self._values(self._column.slice(start, _BATCH))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str | bytes):
            return NotImplemented
        return len(self) == len(other) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        head = self[:3]
        return f"ColumnView({len(self)} values: {head}{', ...' if len(self) > 3 else ''})"


def _decode_source(value: bytes) -> str:
    return os.fsdecode(value)


def _record(row: dict[str, Any], meta_names: Sequence[str]) -> ImageRecord:
    return ImageRecord(
        row["image_id"],
        row["path"],
        row["width"],
        row["height"],
        {name[len(META) :]: row[name] for name in meta_names} if meta_names else None,
        tuple(row["aliases"] or ()),
        None if row["source"] is None else os.fsdecode(row["source"]),
        **{k: row[k] for k in CAPTURE_FIELDS},
    )


class RecordsView(Sequence[ImageRecord]):
    """The image table's rows as `ImageRecord`s, made when asked for."""

    def __init__(self, table: pa.Table):
        self._table = table
        self._meta = [n for n in table.column_names if n.startswith(META)]
        self._columns = [*BUILT_IN, *self._meta]
        self._by_name = {name: table.column(name) for name in self._columns}

    def __len__(self) -> int:
        return self._table.num_rows

    def _rows(self, start: int, length: int) -> list[ImageRecord]:
        part = self._table.slice(start, length).select(self._columns)
        return [_record(row, self._meta) for row in part.to_pylist()]

    @overload
    def __getitem__(self, index: int) -> ImageRecord: ...
    @overload
    def __getitem__(self, index: slice) -> list[ImageRecord]: ...
    def __getitem__(self, index: int | slice) -> ImageRecord | list[ImageRecord]:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step == 1:
                return self._rows(start, max(stop - start, 0))
            return [self[i] for i in range(start, stop, step)]
        i = int(index)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"image row {index} out of range 0..{len(self) - 1}")
        # One scalar per column: ~5x faster than a one-row slice made into Python.
        return _record({k: c[i].as_py() for k, c in self._by_name.items()}, self._meta)

    def __iter__(self) -> Iterator[ImageRecord]:
        for start in range(0, len(self), _BATCH):
            yield from self._rows(start, _BATCH)


class SortedKeys:
    """Binary search for a string among a column's values, through an order of its rows
    (`id_order`): no dict of every key."""

    def __init__(self, keys: pa.ChunkedArray | pa.Array, order: np.ndarray):
        self._keys = keys
        self._order = order

    def __len__(self) -> int:
        return len(self._order)

    def __getitem__(self, i: int) -> str:
        """The i-th key in sorted order (what bisect reads)."""
        return str(self._keys[int(self._order[i])].as_py())

    def find(self, key: str) -> int | None:
        """The row holding `key`, None if none does (the first of several)."""
        # Arrow sorts strings by their UTF-8 bytes, the order of their code points: Python's.
        i = bisect.bisect_left(self, key)
        if i < len(self._order) and self[i] == key:
            return int(self._order[i])
        return None


class AliasMap(Mapping[str, str]):
    """alias -> the image_id it is a byte copy of, over the aliases column (sorted once at
    load: an index has few aliases against its images)."""

    def __init__(self, aliases: pa.ChunkedArray, image_ids: pa.ChunkedArray):
        flat = pc.list_flatten(aliases)
        self._parents = numpy_column(pc.list_parent_indices(aliases)).astype(np.int64)
        self._aliases = flat.combine_chunks() if isinstance(flat, pa.ChunkedArray) else flat
        order = pc.sort_indices(self._aliases) if len(self._aliases) else pa.array([], pa.uint64())
        self._keys = SortedKeys(self._aliases, np.asarray(order, np.int64))
        self._image_ids = image_ids

    def __getitem__(self, alias: str) -> str:
        i = self._keys.find(alias) if isinstance(alias, str) else None
        if i is None:
            raise KeyError(alias)
        return str(self._image_ids[int(self._parents[i])].as_py())

    def __iter__(self) -> Iterator[str]:
        return iter(self._aliases.to_pylist())

    def __len__(self) -> int:
        return len(self._aliases)
