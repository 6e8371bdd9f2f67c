"""Where a collection's images come from: a folder, a list file, a dataset split, a corpus.

Each source yields `SourceImage`s lazily, in a stable order, so a build streams whatever
the collection's size. Problems with the source itself (a folder that cannot be read, a
list with a missing column or a malformed row) raise `SourceError` naming the file and
line; problems with one image file are the builder's to skip and record.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from vsepp.images import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)

LIST_SUFFIXES = (".csv", ".jsonl", ".ndjson", ".parquet")
# A Flickr token file line: "NAME.jpg#N<TAB>caption".
_TOKEN_LINE = re.compile(r"^[^\t]+#\d+\t(.*)$")


class SourceError(ValueError):
    """A source that cannot be read as asked; the message names the file (and line)."""


@dataclass(frozen=True)
class SourceImage:
    """One image of a collection, before it is read."""

    image_id: str  # stable id: a plain relative POSIX path
    path: Path  # the file to read
    captions: tuple[str, ...] = ()  # captions that describe this image, if any
    meta: dict[str, Any] = field(default_factory=dict)  # a list's other columns


def _id_part(name: bytes) -> str:
    """A file name as id text: UTF-8, with bytes that are not UTF-8 written as %XX."""
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        out, rest = [], name
        while rest:
            try:
                out.append(rest.decode("utf-8"))
                break
            except UnicodeDecodeError as e:
                out.append(rest[: e.start].decode("utf-8"))
                out.append("".join(f"%{b:02X}" for b in rest[e.start : e.end]))
                rest = rest[e.end :]
        return "".join(out)


def walk_images_dir(root: str | os.PathLike[str]) -> Iterator[SourceImage]:
    """Every image file under `root`, recursively, in sorted order.

    Image files are those with an extension of the formats read (vsepp.images); hidden
    files and folders and other files are passed over. Symlinks are followed, each folder
    walked once, so a link loop ends. The id is the path relative to `root`.
    """
    top = Path(root)
    try:
        entries = _scan(os.fsencode(top))
    except OSError as e:
        raise SourceError(f"--images_dir {top}: cannot read the folder ({e.strerror})") from e
    seen: set[tuple[int, int]] = {_dir_key(os.fsencode(top))}
    found = 0
    for item in _walk(os.fsencode(top), (), entries, seen):
        found += 1
        yield item
    if not found:
        raise SourceError(
            f"--images_dir {top}: no image files in it "
            f"({', '.join(sorted(IMAGE_EXTENSIONS))}, hidden files passed over)"
        )


def _scan(path: bytes) -> list[os.DirEntry[bytes]]:
    with os.scandir(path) as it:
        return sorted(it, key=lambda e: e.name)


def _dir_key(path: bytes) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _walk(
    folder: bytes,
    parts: tuple[str, ...],
    entries: list[os.DirEntry[bytes]],
    seen: set[tuple[int, int]],
) -> Iterator[SourceImage]:
    for entry in entries:
        if entry.name.startswith(b"."):
            continue
        try:
            is_dir = entry.is_dir(follow_symlinks=True)
        except OSError:
            continue
        if is_dir:
            try:
                key = _dir_key(entry.path)
                if key in seen:
                    continue  # a link back up, or a second way to the same folder
                seen.add(key)
                children = _scan(entry.path)
            except OSError as e:
                log.warning("passing over folder %s: %s", os.fsdecode(entry.path), e.strerror)
                continue
            yield from _walk(entry.path, (*parts, _id_part(entry.name)), children, seen)
        elif os.path.splitext(entry.name)[1].decode("ascii", "replace").lower() in (
            IMAGE_EXTENSIONS
        ):
            image_id = "/".join((*parts, _id_part(entry.name)))
            yield SourceImage(image_id, Path(os.fsdecode(entry.path)))


# --------------------------------------------------------------------------- list files


def read_list(path: str | os.PathLike[str]) -> Iterator[SourceImage]:
    """The rows of a CSV, JSONL or Parquet list with a `path` column.

    `path` is relative to the list's folder or absolute; `image_id` (optional) defaults to
    the path; `captions` (optional) is a list of strings or one string; every other column
    is kept as the image's metadata, with its type (`column_kinds`): int, float, bool,
    timestamp (an aware UTC datetime) or string; an empty cell is None.
    """
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix not in LIST_SUFFIXES:
        raise SourceError(f"--list {file}: expected one of {', '.join(LIST_SUFFIXES)}")
    if not file.is_file():
        raise SourceError(f"--list {file}: no such file")
    reader = {".csv": _csv_rows, ".parquet": _parquet_rows}.get(suffix, _jsonl_rows)
    if suffix == ".parquet":
        kinds = _parquet_kinds(file)
    else:  # a first pass over the whole file: a column's type is the whole column's
        kinds = column_kinds(
            (row for _, row in reader(file)), text=suffix == ".csv", skip=_NOT_META
        )
    ids: set[str] = set()
    count = 0
    for where, row in reader(file):
        item = _list_item(file, where, row, kinds)
        if item.image_id in ids:
            raise SourceError(f"{file}:{where}: image_id {item.image_id!r} appears twice")
        ids.add(item.image_id)
        count += 1
        yield item
    if not count:
        raise SourceError(f"--list {file}: no rows")


_NOT_META = ("path", "image_id", "captions")


def _csv_rows(file: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with open(file, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            return
        _check_header(file, header)
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise SourceError(f"{file}:{line}: {len(row)} fields, the header has {len(header)}")
            yield str(line), dict(zip(header, row, strict=True))


def _jsonl_rows(file: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with open(file, encoding="utf-8-sig") as f:
        for n, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                raise SourceError(f"{file}:{n}: not a JSON object ({e.msg})") from e
            if not isinstance(row, dict):
                raise SourceError(f"{file}:{n}: not a JSON object")
            if n == 1 or "path" not in row:
                _check_header(file, list(row), f"{file}:{n}")
            yield str(n), row


def _parquet_rows(file: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise SourceError(
            f"--list {file}: reading Parquet needs pyarrow (pip install pyarrow)"
        ) from e
    try:
        table = pq.ParquetFile(file)
    except Exception as e:  # pyarrow raises its own ArrowInvalid for a file that is not Parquet
        raise SourceError(f"--list {file}: not a Parquet file ({e})") from e
    _check_header(file, table.schema_arrow.names)
    n = 0
    for batch in table.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            n += 1
            yield f"row {n}", row


def _check_header(file: Path, columns: list[str], where: str | None = None) -> None:
    if "path" not in columns:
        raise SourceError(
            f"{where or file}: no 'path' column (columns: {', '.join(map(str, columns))})"
        )


def _list_item(file: Path, where: str, row: dict[str, Any], kinds: dict[str, Kind]) -> SourceImage:
    at = f"{file}:{where}"
    raw = row.get("path")
    if not isinstance(raw, str) or not raw.strip():
        raise SourceError(f"{at}: 'path' is empty")
    given = Path(raw)
    target = given if given.is_absolute() else file.parent / given
    image_id = row.get("image_id")
    if image_id is None or image_id == "":
        image_id = _default_id(file.parent, given)
    if not isinstance(image_id, str):
        raise SourceError(f"{at}: 'image_id' must be text")
    try:
        captions = _captions(row.get("captions"))
    except ValueError as e:
        raise SourceError(f"{at}: 'captions' {e}") from e
    meta = {k: typed(v, kinds.get(k, "string")) for k, v in row.items() if k not in _NOT_META}
    return SourceImage(image_id, target, captions, meta)


def _default_id(base: Path, given: Path) -> str:
    if not given.is_absolute():
        return PurePosixPath(*given.parts).as_posix()
    try:
        return given.relative_to(base).as_posix()
    except ValueError:
        return PurePosixPath(*given.parts[1:]).as_posix()  # the absolute path minus its root


def _captions(value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                return (value,)
        else:
            return (value,)
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise ValueError("must be a list of strings or one string")
    return tuple(c for c in value if c.strip())


# --------------------------------------------------------------------------- column types

Kind = Literal["bool", "int", "float", "timestamp", "string"]
_INFERRED: tuple[Kind, ...] = ("bool", "int", "float", "timestamp")  # tried in this order
_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
# ISO 8601 as text: a date, optionally a time (T or space) and an offset.
_ISO = re.compile(
    r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:?\d{2})?)?$"
)
_INT64 = (-(2**63), 2**63 - 1)
# "02139", "007": a code with leading zeros is text, not a number (its zeros would be lost).
_LEADING_ZERO = re.compile(r"^[+-]?0\d")


def _instant(text: str) -> dt.datetime | None:
    """ISO 8601 text as an aware UTC datetime (no offset: UTC), or None."""
    if not _ISO.match(text):
        return None
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)


def _fits(value: Any, kind: Kind, text: bool) -> bool:
    """Whether one non-empty value can be of `kind` (CSV cells are `text`)."""
    if text:
        cell = value.strip()
        if kind == "bool":
            return cell.lower() in ("true", "false")
        if kind in ("int", "float") and _LEADING_ZERO.match(cell):
            return False
        if kind == "int":
            return bool(_INT.match(cell)) and _INT64[0] <= int(cell) <= _INT64[1]
        if kind == "float":
            return bool(_FLOAT.match(cell))
        return _instant(cell) is not None
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return (
            isinstance(value, int)
            and not isinstance(value, bool)
            and (_INT64[0] <= value <= _INT64[1])
        )
    if kind == "float":
        return (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and (not isinstance(value, int) or _INT64[0] <= value <= _INT64[1])
        )
    return isinstance(value, str) and _instant(value.strip()) is not None


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def column_kinds(
    rows: Iterable[dict[str, Any]], *, text: bool, skip: Iterable[str] = ()
) -> dict[str, Kind]:
    """The type of every column over all of `rows`, by one deterministic rule: the first of
    bool, int, float, timestamp (ISO 8601 text) that every non-empty value of the column
    fits, else string (a mixed column). Empty cells and nulls fit any type. `text`: the
    values are CSV cells (text; a number with leading zeros, "02139", is text); otherwise
    JSON values, whose own types count."""
    left: dict[str, list[Kind]] = {}
    skipped = set(skip)
    for row in rows:
        for name, value in row.items():
            if name in skipped:
                continue
            kinds = left.setdefault(name, list(_INFERRED))
            if kinds and not _empty(value):
                kinds[:] = [k for k in kinds if _fits(value, k, text)]
    return {name: kinds[0] if kinds else "string" for name, kinds in left.items()}


def typed(value: Any, kind: Kind) -> Any:
    """One value of a column of `kind` (see `column_kinds`); None for an empty one."""
    if _empty(value):
        return None
    if kind == "bool":
        return value if isinstance(value, bool) else value.strip().lower() == "true"
    if kind == "int":
        return value if isinstance(value, int) else int(value.strip())
    if kind == "float":
        return float(value.strip() if isinstance(value, str) else value)
    if kind == "timestamp":
        if isinstance(value, dt.datetime):
            when = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
            return when.astimezone(dt.UTC)
        if isinstance(value, dt.date):
            return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
        return _instant(value.strip())
    if isinstance(value, str):
        return value
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return json.dumps(_jsonable(value), sort_keys=True, ensure_ascii=False)


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def _parquet_kinds(file: Path) -> dict[str, Kind]:
    """A Parquet list's columns keep their own types (dates and decimals as timestamps and
    floats; anything else, lists and structs too, as text)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(file)
    except Exception as e:  # pyarrow raises its own ArrowInvalid for a file that is not Parquet
        raise SourceError(f"--list {file}: not a Parquet file ({e})") from e
    kinds: dict[str, Kind] = {}
    for column in schema:
        t = column.type
        if column.name in _NOT_META:
            continue
        if pa.types.is_boolean(t):
            kinds[column.name] = "bool"
        elif pa.types.is_integer(t):
            kinds[column.name] = "int"
        elif pa.types.is_floating(t) or pa.types.is_decimal(t):
            kinds[column.name] = "float"
        elif pa.types.is_timestamp(t) or pa.types.is_date(t):
            kinds[column.name] = "timestamp"
        else:
            kinds[column.name] = "string"
    return kinds


def encode_meta(meta: dict[str, Any] | None) -> dict[str, Any]:
    """Metadata as JSON can hold it (a shard's record): a timestamp as {"timestamp": ISO}."""
    return {
        k: {"timestamp": v.isoformat()} if isinstance(v, dt.datetime) else v
        for k, v in (meta or {}).items()
    }


def decode_meta(meta: dict[str, Any] | None) -> dict[str, Any]:
    """`encode_meta` undone."""
    out: dict[str, Any] = {}
    for k, v in (meta or {}).items():
        if isinstance(v, dict) and set(v) == {"timestamp"}:
            v = dt.datetime.fromisoformat(v["timestamp"])
        out[k] = v
    return out


# --------------------------------------------------------------------------- other sources


def read_caption_corpus(path: str | os.PathLike[str]) -> list[str]:
    """Captions not tied to images: JSONL ({"caption"} or {"text"}, or JSON strings), a
    dataset token file (NAME#N<TAB>caption) or plain text, one caption a line."""
    file = Path(path)
    try:
        lines = file.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise SourceError(f"--captions {file}: cannot read it ({e})") from e
    out: list[str] = []
    jsonl = file.suffix.lower() in (".jsonl", ".ndjson")
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if jsonl:
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                raise SourceError(f"{file}:{n}: not JSON ({e.msg})") from e
            text = item.get("caption", item.get("text")) if isinstance(item, dict) else item
            if not isinstance(text, str):
                raise SourceError(f'{file}:{n}: expected a string or {{"caption": ...}}')
        else:
            match = _TOKEN_LINE.match(line)
            text = match.group(1) if match else line
        if text.strip():
            out.append(text.strip())
    if not out:
        raise SourceError(f"--captions {file}: no captions in it")
    return out
