"""The index directory (docs/CONTRACTS.md): write it atomically, load and search it.

```
INDEX_DIR/
  manifest.json   format, model_hash, dim, metric, images/captions facts, files, ...
  images.faiss    row i = image i            captions.faiss  row j = caption j
  images.arrow    the image records (`index.records`, `index.columnar`), row i = image i
  captions.arrow  caption_id, image_row, text, row j = caption j
  images/         copies of the indexed image files (path is relative to it; null = no copy)
  images.npy / captions.npy   only for a bare IVF-PQ, whose codes cannot give the vectors back
```

Arrow IPC, JSON and FAISS files only: nothing here is unpickled. The records are
memory-mapped, so a loaded index holds no Python object per row. The manifest is written
last and lists every file with its size, so a truncated file is caught before it is read. An
index of the format before ("vsepp-index/1": images.json, captions.json) still loads, and
`convert_index_dir` (`python -m index.convert`) rewrites it in this one.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import re
import shutil
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from index.columnar import (
    BY_IMAGE,
    CAPTION_COLUMNS,
    CAPTION_START,
    ID_ORDER,
    LOOKUP_COLUMNS,
    AliasMap,
    ColumnView,
    RecordsFileError,
    RecordsView,
    SortedKeys,
    caption_table,
    check_index_column,
    duplicate_id,
    numpy_column,
    read_table,
    with_lookup_columns,
    write_table,
)
from index.faiss_index import (
    ONDISK_TYPE,
    apply_search_params,
    exact_vectors,
    keeps_exact_vectors,
    search_selected,
)
from index.records import (
    BUILT_IN,
    CAPTURE_FIELDS,
    CaptionRecord,
    ImageRecord,
    image_table,
)
from vsepp.atomic import atomic_directory, old_prefix, writer_lock

log = logging.getLogger(__name__)

FORMAT = "vsepp-index/2"  # records in Arrow IPC files
JSON_FORMAT = "vsepp-index/1"  # records in JSON files: still read
FORMATS = (FORMAT, JSON_FORMAT)
MANIFEST = "manifest.json"
INDEX_FILES = {"images": "images.faiss", "captions": "captions.faiss"}
IVFDATA_FILES = {"images": "images.ivfdata", "captions": "captions.ivfdata"}
META_FILES = {"images": "images.arrow", "captions": "captions.arrow"}
JSON_META_FILES = {"images": "images.json", "captions": "captions.json"}
VECTOR_FILES = {"images": "images.npy", "captions": "captions.npy"}
# The near-duplicate group of each image (int64, the group's first row; -1: none).
DUPLICATES_FILE = "duplicates.npy"
IMAGES_DIR = "images"
SIDES = ("images", "captions")
_LOAD_ATTEMPTS = 3  # re-reads when a writer swapped the directory while we were loading


class IndexDirError(ValueError):
    """An index directory that cannot be used; the message names the file and field."""


class IndexFileMissingError(IndexDirError, FileNotFoundError):
    """A file (or the directory itself) that the index directory should have is missing."""


class ModelMismatchError(IndexDirError):
    """The index was built with another model than the one at hand."""


@dataclass(frozen=True)
class NewImage:
    """An image to index (input of a build or an append)."""

    image_id: str  # unique id, a relative path (the dataset's image id)
    file: Path | None = None  # file to copy into INDEX_DIR/images/; None: no copy
    width: int | None = None  # upright size in pixels, where known
    height: int | None = None
    meta: dict[str, Any] | None = None  # a list file's other columns
    aliases: tuple[str, ...] = ()  # ids of byte-identical files indexed as this one
    source: str | None = None  # the file it was read from
    taken_at: datetime | None = None  # capture time, aware UTC (`index.capture`)
    taken_at_source: str | None = None  # "exif" or "mtime"
    camera_make: str | None = None
    camera_model: str | None = None
    lat: float | None = None  # signed decimal degrees
    lon: float | None = None

    def record(self) -> ImageRecord:
        """Its image record (the copy, if any, is stored under its id)."""
        return ImageRecord(
            self.image_id,
            self.image_id if self.file is not None else None,
            self.width,
            self.height,
            self.meta,
            self.aliases,
            self.source,
            self.taken_at,
            self.taken_at_source,
            self.camera_make,
            self.camera_model,
            self.lat,
            self.lon,
        )


def capture_of(row: Mapping[str, Any]) -> dict[str, Any]:
    """The capture fields of a shard's image row (`index.capture`), as record fields:
    taken_at an aware UTC datetime, the others as they are; absent ones left out."""
    out = {k: row[k] for k in CAPTURE_FIELDS if row.get(k) is not None}
    if "taken_at" in out:
        when = datetime.fromisoformat(out["taken_at"])
        out["taken_at"] = (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC)
    return out


@dataclass(frozen=True)
class NewCaption:
    """A caption to index (input of a build or an append)."""

    image_id: str | None  # the image it describes; None: a corpus caption tied to none
    text: str


@dataclass
class IndexPart:
    """One side of an index directory, ready to be written."""

    index: faiss.Index  # row i = record i
    facts: dict[str, Any]  # manifest section: count, index_type, params, recall_at_10, ...
    vectors: np.ndarray | None = None  # exact vectors; stored as .npy only if index lacks them
    # On-disk inverted lists the index maps (index.streaming); moved in as SIDE.ivfdata.
    ivfdata: Path | None = None

    @classmethod
    def empty(cls, dim: int, **facts: Any) -> IndexPart:
        """A side with no vectors: an empty exact index (an index of images alone still
        answers text-to-image and image-to-image searches). `facts` add to its section."""
        base = {"index_type": "flat", "params": {}, "factory": "Flat", "count": 0, "dim": dim,
                "exact": True, "metric": "inner_product", "recall_at_10": 1.0,
                "recall_queries": 0}  # fmt: skip
        return cls(faiss.IndexFlatIP(dim), {**base, **facts}, np.zeros((0, dim), np.float32))


_DRIVE = re.compile(r"^[A-Za-z]:")
MAX_IMAGE_ID = 1024  # characters


def is_plain_image_id(image_id: str) -> bool:
    """True for an id that is a relative POSIX path of plain names: no '..', '.' or empty
    parts, no absolute path, drive letter, backslash or NUL, at most MAX_IMAGE_ID long. The
    one rule for ids, when a build stores a copy under one and when a request names one."""
    return (
        isinstance(image_id, str)
        and 0 < len(image_id) <= MAX_IMAGE_ID
        and "\x00" not in image_id
        and "\\" not in image_id
        and not image_id.startswith("/")
        and not _DRIVE.match(image_id)
        and all(part not in ("", ".", "..") for part in image_id.split("/"))
    )


def check_image_id(image_id: str) -> str:
    """`image_id` as a safe relative POSIX path to store the copy under, or an error."""
    if not is_plain_image_id(image_id):
        raise ValueError(f"image_id {image_id!r} is not a plain relative path; cannot store it")
    return image_id


def versions() -> dict[str, str]:
    """Library versions recorded in the manifest."""
    return {
        "faiss": faiss.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


# --------------------------------------------------------------------------- writing


def _write_json(path: Path, value: Any, *, ascii_only: bool = False) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, ensure_ascii=ascii_only, indent=1)
        f.write("\n")


def _write_json_rows(path: Path, rows: Iterable[Any], *, ascii_only: bool = False) -> None:
    """A JSON list, one row a line, written as `rows` come: the records of ten million
    images are not held a second time as dicts (~2 GB at 10M)."""
    with open(path, "w", encoding="utf-8") as f:
        sep = "[\n"
        for row in rows:
            f.write(sep)
            f.write(json.dumps(row, ensure_ascii=ascii_only))
            sep = ",\n"
        f.write("[]\n" if sep == "[\n" else "\n]\n")


def _place_image(src: Path, dst: Path, *, link: bool) -> None:
    """Put `src` at `dst`: a hard link when asked (unchanged files of the previous index)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass  # another file system or no link support: copy instead
    shutil.copyfile(src, dst)


def _check_part(side: str, part: IndexPart, n_records: int, dim: int) -> None:
    ntotal, d = int(part.index.ntotal), int(part.index.d)
    if ntotal != n_records:
        raise ValueError(f"{side}: the index holds {ntotal} vectors but {n_records} records")
    if d != dim:
        raise ValueError(f"{side}: index dimension {d} differs from dim={dim}")


def write_index_dir(
    target: str | os.PathLike[str],
    *,
    images: IndexPart,
    captions: IndexPart,
    image_records: Sequence[ImageRecord] | pa.Table,
    caption_records: Sequence[CaptionRecord] | pa.Table,
    model_hash: str,
    image_files: Mapping[str, Path] | None = None,
    previous_dir: Path | None = None,
    source: dict[str, Any] | None = None,
    skipped_images: Sequence[dict[str, Any]] = (),
    extra: dict[str, Any] | None = None,
    locked: bool = False,
    duplicates: np.ndarray | None = None,
) -> dict[str, Any]:
    """Write a complete index directory at `target`, atomically; return its manifest.

    The records are `ImageRecord`s / `CaptionRecord`s or already tables (`index.records`'
    image table, the caption columns: what `index.update` passes on). `image_files` maps
    image_id -> a file to copy into images/; records whose file is not given there are
    hard-linked from `previous_dir`/images/ (the directory being replaced, when appending).
    If anything raises, `target` is left exactly as it was. `locked`: the caller holds
    `writer_lock(target)` already. `duplicates`: the near-duplicate group of each image
    (`index.duplicates`), kept as duplicates.npy.
    """
    dim = int(images.index.d)
    image_rows = (
        image_records if isinstance(image_records, pa.Table) else image_table(image_records)
    )
    caption_rows = (
        caption_records if isinstance(caption_records, pa.Table) else caption_table(caption_records)
    )
    image_rows, caption_rows = with_lookup_columns(image_rows, caption_rows)
    n_images = image_rows.num_rows
    _check_part("images", images, n_images, dim)
    _check_part("captions", captions, caption_rows.num_rows, dim)
    dup = duplicate_id(image_rows)
    if dup is not None:
        raise ValueError(f"image_id {dup!r} appears more than once")
    if caption_rows.num_rows:
        bounds = pc.min_max(caption_rows.column("image_row")).as_py()
        for row in (bounds["min"], bounds["max"]):
            if not -1 <= row < n_images:
                at = pc.index(caption_rows.column("image_row"), row).as_py()
                caption_id = caption_rows.column("caption_id")[at].as_py()
                raise ValueError(f"caption {caption_id!r}: image_row {row} out of range")
    image_files = dict(image_files or {})
    stored = _stored_paths(image_rows)
    for image_id, rel in stored:
        check_image_id(rel)
        if image_id not in image_files and previous_dir is None:
            raise ValueError(f"image {image_id!r} has a path but no file to copy")

    manifest: dict[str, Any] = {
        "format": FORMAT,
        "build_id": uuid.uuid4().hex,
        "model_hash": model_hash,
        "dim": dim,
        "metric": "inner_product",
        "normalized": True,
        "images": dict(images.facts, count=n_images),
        "captions": dict(captions.facts, count=caption_rows.num_rows),
        "source": source or {},
        "skipped_images": list(skipped_images),
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": versions(),
        **(extra or {}),
    }
    with atomic_directory(target, locked=locked) as tmp:
        for side, part in (("images", images), ("captions", captions)):
            faiss.write_index(part.index, str(tmp / INDEX_FILES[side]))
            if part.ivfdata is not None:
                # The index file records the lists' path at build time; readers look for
                # the file by name beside the index file (IO_FLAG_ONDISK_SAME_DIR), so the
                # renames of the atomic swap do not break it. The open mapping survives
                # the rename too.
                if part.ivfdata.name != IVFDATA_FILES[side]:
                    raise ValueError(f"{side}: on-disk lists must be named {IVFDATA_FILES[side]}")
                os.replace(part.ivfdata, tmp / IVFDATA_FILES[side])
            vectors_file = None
            if part.vectors is not None and not keeps_exact_vectors(part.index):
                vectors_file = VECTOR_FILES[side]
                np.save(tmp / vectors_file, np.asarray(part.vectors, dtype=np.float32))
            manifest[side]["vectors_file"] = vectors_file
        _write_records(tmp, image_rows, caption_rows)
        if duplicates is not None:
            if np.shape(duplicates) != (n_images,):
                raise ValueError(f"duplicates: shape {np.shape(duplicates)} for {n_images} images")
            np.save(tmp / DUPLICATES_FILE, np.asarray(duplicates, np.int64))
        (tmp / IMAGES_DIR).mkdir()
        for image_id, rel in tqdm(stored, desc="image files", unit="img", disable=None):
            if image_id in image_files:
                # A hard link where it can: a collection's photos are not stored twice.
                _place_image(image_files[image_id], tmp / IMAGES_DIR / rel, link=True)
            else:
                assert previous_dir is not None
                _place_image(previous_dir / IMAGES_DIR / rel, tmp / IMAGES_DIR / rel, link=True)
        _finish_manifest(tmp, manifest)
    log.info("wrote %s: %d images, %d captions", target, n_images, caption_rows.num_rows)
    return manifest


def convert_index_dir(target: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Rewrite an index of the JSON format ("vsepp-index/1") in the Arrow one, atomically:
    the records become images.arrow and captions.arrow, every other file (FAISS indexes,
    on-disk lists, vectors, image copies) is hard-linked (copied across file systems). The
    manifest keeps its facts under a new build_id, with `converted_from`. Returns the new
    manifest, None for an index already in the Arrow format."""
    index_dir = Path(target).absolute()
    with writer_lock(index_dir):
        old = load_index(index_dir, mmap=False)
        if old.manifest["format"] == FORMAT:
            return None
        manifest = {k: v for k, v in old.manifest.items() if k != "files"}
        converted = {
            "format": old.manifest["format"],
            "build_id": old.manifest.get("build_id"),
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        manifest.update(format=FORMAT, build_id=uuid.uuid4().hex, converted_from=converted)
        with atomic_directory(index_dir, locked=True) as tmp:
            for name in old.manifest["files"]:
                if name not in JSON_META_FILES.values():
                    _place_image(index_dir / name, tmp / name, link=True)
            _write_records(tmp, old._records, old._caption_records)
            (tmp / IMAGES_DIR).mkdir()
            for image_id, rel in _stored_paths(old._records):
                if (index_dir / IMAGES_DIR / rel).exists():
                    _place_image(index_dir / IMAGES_DIR / rel, tmp / IMAGES_DIR / rel, link=True)
                else:
                    log.warning("%s: the stored copy of %r is missing", index_dir, image_id)
            _finish_manifest(tmp, manifest)
    log.info("converted %s to %s", index_dir, FORMAT)
    return manifest


def _write_records(directory: Path, images: pa.Table, captions: pa.Table) -> None:
    """images.arrow and captions.arrow (with their lookup columns) into `directory`."""
    write_table(directory / META_FILES["images"], images)
    write_table(directory / META_FILES["captions"], captions)


def _finish_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    """List the files of `directory` with their sizes in `manifest` and write it, last: a
    directory with a manifest is a complete one."""
    manifest["files"] = {
        p.name: {"bytes": p.stat().st_size} for p in sorted(directory.iterdir()) if p.is_file()
    }
    for side in SIDES:
        # What the side takes on disk: its FAISS file and, on-disk types, its lists.
        names = (INDEX_FILES[side], IVFDATA_FILES[side], VECTOR_FILES[side])
        manifest[side]["index_bytes"] = sum(
            manifest["files"][n]["bytes"] for n in names if n in manifest["files"]
        )
    _write_json(directory / MANIFEST, manifest)


def _stored_paths(images: pa.Table) -> list[tuple[str, str]]:
    """(image_id, path) of the images with a stored copy."""
    has = pc.is_valid(images.column("path"))
    kept = images.filter(has).select(["image_id", "path"])
    return list(
        zip(kept.column("image_id").to_pylist(), kept.column("path").to_pylist(), strict=True)
    )


# --------------------------------------------------------------------------- reading


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise IndexFileMissingError(f"{path.parent}: missing {path.name}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise IndexDirError(f"{path}: cannot read: {e}") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise IndexDirError(f"{path}: not valid JSON ({e})") from e


def _field(obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise IndexDirError(f"{where}: missing field {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise IndexDirError(f"{where}: field {key!r} has the wrong type ({type(value).__name__})")
    return value


def _optional(obj: dict[str, Any], key: str, kind: type, where: str) -> Any:
    return _field(obj, key, (kind, type(None)), where) if key in obj else None


def read_manifest(index_dir: Path) -> dict[str, Any]:
    """The manifest of `index_dir`, with its format and required fields checked."""
    path = index_dir / MANIFEST
    manifest = _read_json(path)
    if not isinstance(manifest, dict):
        raise IndexDirError(f"{path}: expected a JSON object")
    fmt = manifest.get("format")
    if fmt not in FORMATS:
        raise IndexDirError(
            f"{path}: unsupported format {fmt!r} (this code reads "
            f"{' and '.join(map(repr, FORMATS))})"
        )
    _field(manifest, "model_hash", str, str(path))
    _field(manifest, "dim", int, str(path))
    _field(manifest, "files", dict, str(path))
    for side in SIDES:
        section = _field(manifest, side, dict, str(path))
        _field(section, "count", int, f"{path} [{side}]")
        _field(section, "index_type", str, f"{path} [{side}]")
        _field(section, "params", dict, f"{path} [{side}]")
    return manifest


def _check_files(index_dir: Path, manifest: dict[str, Any]) -> None:
    """Every file the manifest lists exists with the recorded size."""
    for name, facts in manifest["files"].items():
        path = index_dir / name
        if "/" in name or name.startswith("."):
            raise IndexDirError(f"{index_dir / MANIFEST}: bad file name {name!r} in 'files'")
        try:
            size = path.stat().st_size
        except FileNotFoundError as e:
            raise IndexFileMissingError(f"{index_dir}: missing {name}") from e
        expected = facts.get("bytes") if isinstance(facts, dict) else None
        if size != expected:
            raise IndexDirError(
                f"{path}: {size} bytes, the manifest says {expected} (truncated or replaced?)"
            )
    for name in (*INDEX_FILES.values(), *meta_files(manifest).values()):
        if name not in manifest["files"]:
            raise IndexDirError(f"{index_dir / MANIFEST}: 'files' does not list {name}")


def meta_files(manifest: dict[str, Any]) -> dict[str, str]:
    """side -> the records file of an index of `manifest`'s format."""
    return JSON_META_FILES if manifest.get("format") == JSON_FORMAT else META_FILES


def _read_image_records(path: Path) -> list[ImageRecord]:
    data = _read_json(path)
    if not isinstance(data, list):
        raise IndexDirError(f"{path}: expected a JSON list")
    out = []
    for i, item in enumerate(data):
        where = f"{path} [{i}]"
        image_id = _field(item, "image_id", str, where)
        rel = _field(item, "path", (str, type(None)), where)
        aliases = item.get("aliases", [])
        if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
            raise IndexDirError(f"{where}: field 'aliases' must be a list of strings")
        out.append(
            ImageRecord(
                image_id,
                rel,
                _optional(item, "width", int, where),
                _optional(item, "height", int, where),
                _optional(item, "meta", dict, where),
                tuple(aliases),
                _optional(item, "source", str, where),
            )
        )
    return out


def _json_tables(index_dir: Path, manifest: dict[str, Any]) -> tuple[pa.Table, pa.Table]:
    """The records of an index in the JSON format, as the tables of the Arrow one (built in
    memory, lookup columns included)."""
    images = _read_image_records(index_dir / JSON_META_FILES["images"])
    _check_count(index_dir, manifest, "images", len(images))
    if len({r.image_id for r in images}) != len(images):
        raise IndexDirError(f"{index_dir / JSON_META_FILES['images']}: duplicate image_id")
    captions = _read_caption_records(index_dir / JSON_META_FILES["captions"], len(images))
    _check_count(index_dir, manifest, "captions", len(captions))
    try:
        image_rows = image_table(images)
    except ValueError as e:
        raise IndexDirError(f"{index_dir / JSON_META_FILES['images']}: {e}") from e
    return with_lookup_columns(image_rows, caption_table(captions))


def _arrow_tables(index_dir: Path, manifest: dict[str, Any]) -> tuple[pa.Table, pa.Table]:
    """images.arrow and captions.arrow, memory-mapped, their columns and counts checked."""
    paths = {side: index_dir / META_FILES[side] for side in SIDES}
    try:
        images = read_table(paths["images"], {**_REQUIRED_IMAGE_COLUMNS}, validate=True)
        captions = read_table(paths["captions"], {**CAPTION_COLUMNS, BY_IMAGE: pa.int64()},
                              validate=True)  # fmt: skip
        _check_count(index_dir, manifest, "images", images.num_rows)
        _check_count(index_dir, manifest, "captions", captions.num_rows)
        n_images, n_captions = images.num_rows, captions.num_rows
        check_index_column(paths["images"], images, ID_ORDER, 0, n_images - 1)
        check_index_column(paths["images"], images, CAPTION_START, 0, n_captions)
        check_index_column(paths["captions"], captions, "image_row", -1, n_images - 1)
        check_index_column(paths["captions"], captions, BY_IMAGE, 0, n_captions - 1)
    except RecordsFileError as e:
        raise IndexDirError(str(e)) from e
    return images, captions


_REQUIRED_IMAGE_COLUMNS = {**BUILT_IN, ID_ORDER: pa.int64(), CAPTION_START: pa.int64()}


def _check_count(index_dir: Path, manifest: dict[str, Any], side: str, n: int) -> None:
    if manifest[side]["count"] != n:
        raise IndexDirError(
            f"{index_dir}: manifest {side}.count={manifest[side]['count']} but "
            f"{meta_files(manifest)[side]} has {n} entries"
        )


def _read_caption_records(path: Path, n_images: int) -> list[CaptionRecord]:
    data = _read_json(path)
    if not isinstance(data, list):
        raise IndexDirError(f"{path}: expected a JSON list")
    out = []
    for i, item in enumerate(data):
        where = f"{path} [{i}]"
        row = _field(item, "image_row", int, where)
        if not -1 <= row < n_images:
            raise IndexDirError(f"{where}: image_row {row} is not a row of images.json")
        caption_id = _field(item, "caption_id", str, where)
        out.append(CaptionRecord(caption_id, row, _field(item, "text", str, where)))
    return out


def _is_mapped(path: Path) -> bool | None:
    """Whether `path` is memory-mapped by this process (None where /proc is unavailable)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    real = str(path.resolve())
    return any(line.endswith(real) for line in maps.splitlines())


def _read_flags(index_type: str, mmap: bool) -> int | None:
    """FAISS read flags for `index_type`: on-disk lists are always mapped, from beside the
    index file (the path recorded at build time was a temporary directory)."""
    if index_type == ONDISK_TYPE:
        # READ_ONLY maps the lists read-only (a read-only volume works; without it FAISS
        # opens them for writing).
        return int(faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)
    return _mmap_flag(index_type) if mmap else None


def _mmap_flag(index_type: str) -> int | None:
    """The FAISS read flag that memory-maps `index_type`, None if this FAISS has none.

    IO_FLAG_MMAP_IFC (FAISS >= 1.11) maps the codes of flat, HNSW and IVF inverted lists
    (and the refine vectors); the legacy IO_FLAG_MMAP maps IVF lists only and silently
    reads flat/HNSW into memory.
    """
    if hasattr(faiss, "IO_FLAG_MMAP_IFC"):
        return int(faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
    if index_type in ("ivf", "ivfpq"):
        return int(faiss.IO_FLAG_MMAP)
    return None


def read_faiss(path: Path, index_type: str, *, mmap: bool) -> tuple[faiss.Index, str]:
    """Read one FAISS file; returns (index, how: "mmap" | "read" | "read (...)")."""
    flag = _read_flags(index_type, mmap)
    how = "read"
    if index_type == ONDISK_TYPE:
        try:
            return faiss.read_index(str(path), int(flag or 0)), "mmap (on-disk lists)"
        except RuntimeError as e:
            raise IndexDirError(
                f"{path}: cannot read the on-disk index or its "
                f"{path.with_suffix('.ivfdata').name} ({str(e).splitlines()[0]})"
            ) from e
    if flag is not None:
        try:
            index = faiss.read_index(str(path), flag)
        except RuntimeError as e:
            log.warning("%s: memory-mapped read failed (%s); reading it into memory", path, e)
            how = "read (mmap failed)"
        else:
            mapped = _is_mapped(path)
            return index, "mmap" if mapped or mapped is None else "read (mmap not supported)"
    try:
        return faiss.read_index(str(path)), how
    except RuntimeError as e:
        raise IndexDirError(f"{path}: not a readable FAISS index ({str(e).splitlines()[0]})") from e


class LoadedIndex:
    """The FAISS indexes of one index directory and their metadata, ready to search.

    Read-only: `search_images` / `search_captions` may be called from several threads at
    once (FAISS CPU search does not modify the index). `vectors` is for offline use.
    """

    def __init__(
        self,
        index_dir: Path,
        manifest: dict[str, Any],
        images: pa.Table,
        captions: pa.Table,
        image_index: faiss.Index,
        caption_index: faiss.Index,
        load_modes: dict[str, str],
    ) -> None:
        self.index_dir = index_dir
        self.manifest = manifest
        # Views over the (memory-mapped) columns: values are made when asked for.
        self.image_ids: ColumnView[str] = ColumnView(images.column("image_id"))
        self.image_paths: Sequence[str | None] = ColumnView(images.column("path"))
        self.captions: ColumnView[str] = ColumnView(captions.column("text"))
        self.caption_ids: ColumnView[str] = ColumnView(captions.column("caption_id"))
        self.caption_image_rows: np.ndarray = numpy_column(captions.column("image_row"))
        self.image_records: Sequence[ImageRecord] = RecordsView(images)
        self.image_index = image_index
        self.caption_index = caption_index
        self.load_modes = load_modes  # side -> "mmap" or "read ..." (what really happened)
        self.dim = int(manifest["dim"])
        self._images_root = (index_dir / IMAGES_DIR).resolve()
        self._records = images
        self._caption_records = captions
        self._ids = SortedKeys(images.column("image_id"), numpy_column(images.column(ID_ORDER)))
        # Image i's caption rows: _by_image[_start[i]:_start[i + 1]] (columnar's doc).
        self._by_image = numpy_column(captions.column(BY_IMAGE))
        self._start = numpy_column(images.column(CAPTION_START))

    @functools.cached_property
    def images_by_alias(self) -> Mapping[str, str]:
        """alias -> image_id: the byte-identical files indexed as another image."""
        return AliasMap(self._records.column("aliases"), self._records.column("image_id"))

    @functools.cached_property
    def _stored_vectors(self) -> dict[str, np.ndarray | None]:
        """Per side, the .npy of exact vectors (mapped once) where the index keeps only
        codes; what a filtered search scores a few selected rows with."""
        names = {side: self.manifest[side].get("vectors_file") for side in SIDES}
        return {
            side: None if not name else np.load(self.index_dir / name, mmap_mode="r")
            for side, name in names.items()
        }

    @functools.cached_property
    def duplicate_groups(self) -> np.ndarray | None:
        """int64 per image: its near-duplicate group (the group's first row), -1 for an
        image in none; None for an index built without grouping."""
        if DUPLICATES_FILE not in self.manifest.get("files", {}):
            return None
        return np.load(self.index_dir / DUPLICATES_FILE, mmap_mode="r", allow_pickle=False)

    @functools.cached_property
    def _group_order(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows sorted by group, their groups), made once, for `group_of`."""
        groups = self.duplicate_groups
        if groups is None:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        order = np.argsort(groups, kind="stable")
        return order, np.asarray(groups)[order]

    def group_of(self, row: int) -> list[int]:
        """The rows of the near-duplicate group of image `row` (itself included), in row
        order; [row] for an image in no group."""
        groups = self.duplicate_groups
        if groups is None or groups[row] < 0:
            return [row]
        order, labels = self._group_order
        label = groups[row]
        lo, hi = np.searchsorted(labels, [label, label + 1])
        return sorted(int(r) for r in order[lo:hi])

    @functools.cached_property
    def image_table(self) -> pa.Table:
        """The image records as columns, for filters (`index.records`): images.arrow's
        columns, still on the mapped pages, without its lookup columns."""
        return self._records.drop_columns(list(LOOKUP_COLUMNS))

    @property
    def caption_table(self) -> pa.Table:
        """The caption records as columns: caption_id, image_row, text."""
        return self._caption_records.select(list(CAPTION_COLUMNS))

    @property
    def model_hash(self) -> str:
        """Hash of the model the vectors came from."""
        return str(self.manifest["model_hash"])

    def __repr__(self) -> str:
        return (
            f"LoadedIndex({self.index_dir}, {len(self.image_ids)} images "
            f"[{self.manifest['images']['index_type']}], {len(self.captions)} captions "
            f"[{self.manifest['captions']['index_type']}], {self.load_modes})"
        )

    def _search(
        self,
        index: faiss.Index,
        queries: np.ndarray,
        k: int,
        side: str,
        where: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(
                f"queries of shape {tuple(np.shape(queries))}: the {side} index has dim {self.dim}"
            )
        if not np.isfinite(q).all():
            raise ValueError("queries contain NaN or infinite values")
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"k={k!r}: must be a positive integer")
        k = min(int(k), int(index.ntotal))
        # Cosine scores whatever the query's norm (a zero query stays zero).
        norms = np.linalg.norm(q, axis=1, keepdims=True)
        q = np.ascontiguousarray(q / np.where(norms > 0, norms, 1.0), dtype=np.float32)
        if k == 0 or len(q) == 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        if where is not None:
            stored = self._stored_vectors[side]
            return search_selected(index, q, k, np.asarray(where, bool), stored=stored)
        scores, rows = index.search(q, k)
        return np.asarray(scores, np.float32), np.asarray(rows, np.int64)

    def search_images(
        self, queries: np.ndarray, k: int, where: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k images per query: (scores float32 [n, k'], rows int64 [n, k']), best first,
        k' = min(k, number of images): FAISS's own answer, so an approximate index that
        found fewer pads with row -1 (`index.search.ranked` drops it). With `where` (bool
        per image) only the images it selects are searched (`faiss_index.search_selected`)."""
        return self._search(self.image_index, queries, k, "images", where)

    def search_captions(
        self, queries: np.ndarray, k: int, where: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k captions per query, as `search_images` (`where`: bool per caption)."""
        return self._search(self.caption_index, queries, k, "captions", where)

    def image_row(self, image_id: str) -> int | None:
        """Row of `image_id`, None if it is not indexed (a binary search over id_order)."""
        return self._ids.find(image_id) if isinstance(image_id, str) else None

    def image_file(self, image_id: str) -> Path | None:
        """The stored copy of an indexed image; None for anything else.

        Only plain ids (`is_plain_image_id`) of the index's records (compared as raw strings,
        nothing decoded) whose stored file resolves to a regular file inside INDEX_DIR/images.
        """
        row = self.image_row(image_id) if is_plain_image_id(image_id) else None
        rel = None if row is None else self.image_paths[row]
        if rel is None:
            return None
        try:
            path = (self._images_root / rel).resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        if not path.is_relative_to(self._images_root) or not path.is_file():
            return None
        return path

    def caption_rows_of(self, image_row: int) -> np.ndarray:
        """Caption rows of image `image_row`, in caption order."""
        if not 0 <= image_row < len(self.image_ids):
            raise IndexError(f"image row {image_row} out of range 0..{len(self.image_ids) - 1}")
        end = (
            self._start[image_row + 1] if image_row + 1 < len(self._start) else len(self._by_image)
        )
        return self._by_image[self._start[image_row] : end]

    def captions_of(self, image_row: int) -> list[str]:
        """The captions of image `image_row`."""
        return [self.captions[j] for j in self.caption_rows_of(image_row)]

    def vectors(self, side: str) -> np.ndarray:
        """The exact vectors of `side` ("images" / "captions"): reconstructed or from .npy.

        Not thread-safe for IVF (it builds a temporary id map on the index).
        """
        if side not in SIDES:
            raise ValueError(f"side={side!r}: expected one of {SIDES}")
        name = self.manifest[side].get("vectors_file")
        if name:
            arr = np.load(self.index_dir / name, mmap_mode="r", allow_pickle=False)
            return np.asarray(arr, dtype=np.float32)
        if self.manifest[side].get("index_type") == ONDISK_TYPE:
            raise IndexDirError(
                f"{self.index_dir}: the {side} index is on disk ({ONDISK_TYPE}) and keeps only "
                "compressed codes, not the vectors: rebuild it from the shards "
                "(index.build --from_shards DIR --max_index_memory SIZE)"
            )
        index = self.image_index if side == "images" else self.caption_index
        vecs = exact_vectors(index)
        if vecs is None:
            raise IndexDirError(
                f"{self.index_dir}: the {side} index keeps no exact vectors and no "
                f"{VECTOR_FILES[side]} was stored"
            )
        return vecs


def check_built_with(
    index_dir: str | os.PathLike[str],
    manifest: dict[str, Any],
    model_hash: str,
    embed_dim: int | None = None,
) -> None:
    """Refuse a model other than the one the index was built with: its vectors live in
    another space. The one home of this check (build, add, query, evaluate, the service)."""
    if manifest["model_hash"] != model_hash:
        raise ModelMismatchError(
            f"{index_dir} was built with model {manifest['model_hash']}, but the model given "
            f"is {model_hash}; rebuild the index with this model"
        )
    if embed_dim is not None and int(manifest["dim"]) != int(embed_dim):
        raise ModelMismatchError(
            f"{index_dir} has dim {manifest['dim']}, the model's embed_dim is {embed_dim}"
        )


def _load_once(index_dir: Path, expected_model_hash: str | None, mmap: bool) -> LoadedIndex:
    manifest = read_manifest(index_dir)
    if expected_model_hash is not None:
        check_built_with(index_dir, manifest, expected_model_hash)
    _check_files(index_dir, manifest)
    if manifest["format"] == JSON_FORMAT:
        images, captions = _json_tables(index_dir, manifest)
    else:
        images, captions = _arrow_tables(index_dir, manifest)
    records = {"images": images.num_rows, "captions": captions.num_rows}
    loaded: dict[str, faiss.Index] = {}
    modes: dict[str, str] = {}
    for side in SIDES:
        section = manifest[side]
        path = index_dir / INDEX_FILES[side]
        index, modes[side] = read_faiss(path, section["index_type"], mmap=mmap)
        if int(index.ntotal) != records[side]:
            raise IndexDirError(
                f"{path}: holds {index.ntotal} vectors but {meta_files(manifest)[side]} has "
                f"{records[side]} entries"
            )
        if int(index.d) != manifest["dim"]:
            raise IndexDirError(f"{path}: dimension {index.d}, manifest dim={manifest['dim']}")
        apply_search_params(index, section["index_type"], section["params"])
        loaded[side] = index
    return LoadedIndex(
        index_dir, manifest, images, captions, loaded["images"], loaded["captions"], modes
    )


def load_index(
    index_dir: str | os.PathLike[str],
    *,
    expected_model_hash: str | None = None,
    mmap: bool = True,
) -> LoadedIndex:
    """Load an index directory, checking it is complete and consistent.

    With `mmap`, FAISS files are memory-mapped where this FAISS can (flat, HNSW, IVF with
    FAISS >= 1.11) and read into memory otherwise; `LoadedIndex.load_modes` says which.
    Raises IndexFileMissingError, IndexDirError or ModelMismatchError naming the problem.
    """
    path = Path(index_dir).absolute()
    if not path.is_dir():
        hint = ""
        if path.parent.is_dir():
            aside = sorted(p.name for p in path.parent.glob(old_prefix(path) + "*"))
            if aside:
                hint = f"; an interrupted swap left the previous index at {path.parent / aside[0]}"
        raise IndexFileMissingError(f"index directory {path} does not exist{hint}")
    for _ in range(_LOAD_ATTEMPTS):
        loaded = _load_once(path, expected_model_hash, mmap)
        # A writer may have swapped the directory mid-load; then the files can be a mix.
        if read_manifest(path).get("build_id") == loaded.manifest.get("build_id"):
            log.info("loaded %r", loaded)
            return loaded
        log.info("%s was replaced while loading; loading again", path)
    raise IndexDirError(f"{path} keeps changing while being loaded")
