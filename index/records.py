"""The image records of an index as columns: what filters read and results carry.

`image_table(records)` is one `pyarrow.Table`, a row per image in index order, with the
built-in columns of `BUILT_IN` and a list file's own columns as ``meta.NAME`` with their types
(`meta_array`: int64, float64, bool, timestamp[us, UTC] or string). It is what images.arrow
holds (`index.store`, with its lookup columns beside) and what `LoadedIndex.image_table`
gives. `filter_fields(table)` names what a filter may use: the built-in fields and the list's
columns under their own names (a list column named like a built-in one is reached as
``meta.NAME``).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa

from index.filters import Field, kind_of

META = "meta."
CAPTURE_FIELDS = ("taken_at", "taken_at_source", "camera_make", "camera_model", "lat", "lon")
TIMESTAMP = pa.timestamp("us", tz="UTC")
# Built-in fields: name -> Arrow type. `folder` is the id's directory ("" at the top);
# `source` the file read, as the file system's bytes (a name need not be UTF-8); the capture
# fields are `index.capture`'s.
BUILT_IN: dict[str, pa.DataType] = {
    "image_id": pa.string(),
    "path": pa.string(),
    "width": pa.int64(),
    "height": pa.int64(),
    "aliases": pa.list_(pa.string()),
    "source": pa.binary(),
    "folder": pa.string(),
    "taken_at": TIMESTAMP,
    "taken_at_source": pa.string(),
    "camera_make": pa.string(),
    "camera_model": pa.string(),
    "lat": pa.float64(),
    "lon": pa.float64(),
}


class RecordLike(Protocol):
    """What a table is made of: `index.store.ImageRecord`."""

    @property
    def image_id(self) -> str: ...
    @property
    def path(self) -> str | None: ...
    @property
    def width(self) -> int | None: ...
    @property
    def height(self) -> int | None: ...
    @property
    def meta(self) -> dict[str, Any] | None: ...
    @property
    def aliases(self) -> tuple[str, ...]: ...
    @property
    def source(self) -> str | None: ...
    @property
    def taken_at(self) -> dt.datetime | None: ...
    @property
    def taken_at_source(self) -> str | None: ...
    @property
    def camera_make(self) -> str | None: ...
    @property
    def camera_model(self) -> str | None: ...
    @property
    def lat(self) -> float | None: ...
    @property
    def lon(self) -> float | None: ...


@dataclass(frozen=True)
class ImageRecord:
    """One image's record (a row of images.arrow)."""

    image_id: str  # the dataset's id: the image path relative to the images root
    path: str | None  # relative to INDEX_DIR/images/; None when the file was not copied
    width: int | None = None  # upright size in pixels (collections; None for datasets)
    height: int | None = None
    meta: dict[str, Any] | None = None  # a list file's other columns
    aliases: tuple[str, ...] = ()  # ids of byte-identical files indexed as this one
    source: str | None = None  # the file it was read from, for `index.remove --missing`
    taken_at: dt.datetime | None = None  # capture time, aware UTC (`index.capture`)
    taken_at_source: str | None = None  # "exif" or "mtime"
    camera_make: str | None = None
    camera_model: str | None = None
    lat: float | None = None  # signed decimal degrees
    lon: float | None = None

    def to_json(self) -> dict[str, Any]:
        """Its row of images.json, the format of an index before "vsepp-index/2" (the
        benchmarks write it to compare; timestamps as ISO 8601 text)."""
        out: dict[str, Any] = {"image_id": self.image_id, "path": self.path}
        for key in ("width", "height", "source", *CAPTURE_FIELDS):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.meta is not None:
            out["meta"] = {k: _plain_json(v) for k, v in self.meta.items()}
        if self.taken_at is not None:
            out["taken_at"] = self.taken_at.isoformat()
        if self.aliases:
            out["aliases"] = list(self.aliases)
        return out


def _plain_json(value: Any) -> Any:
    return value.isoformat() if isinstance(value, dt.datetime) else value


@dataclass(frozen=True)
class CaptionRecord:
    """One caption's record (a row of captions.arrow)."""

    caption_id: str  # "IMAGE_ID#n", n counting that image's captions from 0; "corpus#n"
    image_row: int  # row of its image in images.arrow / images.faiss; -1: tied to no image
    text: str  # the raw caption


def folder_of(image_id: str) -> str:
    """The directory part of an image id (POSIX), "" for an image at the top."""
    return posixpath.dirname(image_id)


def image_table(records: Sequence[RecordLike]) -> pa.Table:
    """The records as columns (see the module doc)."""
    columns: dict[str, pa.Array] = {}
    for name, type_ in BUILT_IN.items():
        if name == "folder":
            values: list[Any] = [folder_of(r.image_id) for r in records]
        elif name == "source":
            values = [None if r.source is None else os.fsencode(r.source) for r in records]
        elif name == "aliases":
            values = [list(r.aliases) for r in records]
        else:
            values = [getattr(r, name) for r in records]
        try:
            columns[name] = pa.array(values, type_)
        except (pa.ArrowException, UnicodeError, OverflowError) as e:
            raise ValueError(f"image records: column {name!r} cannot be stored ({e})") from e
    names = sorted({k for r in records if r.meta for k in r.meta})
    for name in names:
        columns[META + name] = meta_array([(r.meta or {}).get(name) for r in records])
    return pa.table(columns)


def meta_array(values: Sequence[Any]) -> pa.Array:
    """A list column's values as one typed Arrow array, by one deterministic rule: all
    booleans: bool; all integers: int64; integers and floats: float64; all datetimes:
    timestamp[us, UTC] (a naive one is UTC); anything else, mixed ones too: string (a
    value that is not text as its JSON). None is null in every type."""
    kinds = {_kind(v) for v in values if v is not None}
    if kinds == {"bool"}:
        return pa.array(values, pa.bool_())
    if kinds == {"int"}:
        try:
            return pa.array(values, pa.int64())
        except OverflowError:
            pass
    elif kinds and kinds <= {"int", "float"}:
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    elif kinds == {"timestamp"}:
        return pa.array([None if v is None else _utc(v) for v in values], TIMESTAMP)
    return pa.array([None if v is None else _text(v) for v in values], pa.string())


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, dt.datetime):
        return "timestamp"
    return "string"


def _utc(value: dt.datetime) -> dt.datetime:
    return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dt.datetime):
        return _utc(value).isoformat()
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


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
