"""Issue 21, the records half: capture fields read from the files, a list's typed columns,
and the records as memory-mapped Arrow columns (the JSON format still loads, and converts).
No model, no TensorFlow beyond tf.data in the shard writer."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from index import convert
from index.builder import BuildOptions, FilesSource, IndexPolicy, build, build_index_dir
from index.capture import capture_facts
from index.records import TIMESTAMP, filter_fields
from index.search import image_hits, top_images
from index.shards import prepare_file
from index.sources import column_kinds, read_list, walk_images_dir
from index.store import (
    IndexDirError,
    NewImage,
    _is_mapped,
    convert_index_dir,
    load_index,
)
from index.update import add_to_index, remove_from_index
from tests.index_helpers import (
    FakeEncoders,
    collection,
    faiss_threads,
    make_index,
    to_json_format,
    unit_vectors,
)

UTC = dt.UTC


@pytest.fixture(autouse=True)
def _one_faiss_thread() -> Iterator[None]:
    with faiss_threads(1):
        yield


def photo(
    *,
    when: str | None = None,
    offset: str | None = None,
    make: str | None = None,
    model: str | None = None,
    gps: tuple[str, tuple[float, ...], str, tuple[float, ...]] | None = None,
    colour: tuple[int, int, int] = (10, 20, 30),
    fmt: str = "JPEG",
) -> bytes:
    """A small photo with the EXIF fields given (Pillow's Image.Exif)."""
    exif = Image.Exif()
    if make is not None:
        exif[271] = make
    if model is not None:
        exif[272] = model
    sub = exif.get_ifd(0x8769)
    if when is not None:
        sub[36867] = when
    if offset is not None:
        sub[36881] = offset
    if gps is not None:
        ifd = exif.get_ifd(0x8825)
        ifd[1], ifd[2], ifd[3], ifd[4] = gps
    buffer = io.BytesIO()
    Image.new("RGB", (16, 12), colour).save(buffer, fmt, exif=exif)
    return buffer.getvalue()


MTIME_NS = 1_700_000_000_250_000_000  # 2023-11-14T22:13:20.25Z


# --------------------------------------------------------------------------- capture


def test_exif_time_with_offset_is_an_instant_in_utc() -> None:
    got = capture_facts(photo(when="2023:06:01 12:30:45", offset="+02:00"), MTIME_NS)
    assert got["taken_at"] == "2023-06-01T10:30:45+00:00"
    assert got["taken_at_source"] == "exif"
    west = capture_facts(photo(when="2023:06:01 22:00:00", offset="-05:00"), MTIME_NS)
    assert west["taken_at"] == "2023-06-02T03:00:00+00:00"


def test_exif_time_without_offset_is_taken_as_utc() -> None:
    got = capture_facts(photo(when="2023:06:01 12:30:45"), MTIME_NS)
    assert (got["taken_at"], got["taken_at_source"]) == ("2023-06-01T12:30:45+00:00", "exif")


@pytest.mark.parametrize("when", [None, "0000:00:00 00:00:00", "2023:02:31 10:00:00", "soon", ""])
def test_no_usable_exif_time_falls_back_to_the_mtime(when: str | None) -> None:
    got = capture_facts(photo(when=when), MTIME_NS)
    assert got["taken_at"] == "2023-11-14T22:13:20.250000+00:00"
    assert got["taken_at_source"] == "mtime"


def test_camera_and_gps() -> None:
    got = capture_facts(
        photo(make="Canon\x00  ", model="  Canon EOS 5D\x00",
              gps=("S", (33.0, 51.0, 36.0), "W", (151.0, 12.0, 0.0))),
        MTIME_NS,
    )  # fmt: skip
    assert got["camera_make"] == "Canon" and got["camera_model"] == "Canon EOS 5D"
    assert got["lat"] == pytest.approx(-33.86) and got["lon"] == pytest.approx(-151.2)
    north = capture_facts(photo(gps=("N", (48.0, 51.0, 0.0), "E", (2.0, 21.0, 0.0))), None)
    assert north["lat"] == pytest.approx(48.85) and north["lon"] == pytest.approx(2.35)


@pytest.mark.parametrize(
    "gps",
    [
        ("N", (91.0, 0.0, 0.0), "E", (2.0, 0.0, 0.0)),  # latitude out of range
        ("X", (48.0, 0.0, 0.0), "E", (2.0, 0.0, 0.0)),  # no valid reference
        ("N", (48.0, 0.0, 0.0), "E", (181.0, 0.0, 0.0)),
    ],
)
def test_invalid_gps_is_absent(gps: tuple) -> None:
    got = capture_facts(photo(gps=gps, make="Nikon"), MTIME_NS)
    assert "lat" not in got and "lon" not in got and got["camera_make"] == "Nikon"


def test_bad_exif_never_fails() -> None:
    assert capture_facts(b"not an image", MTIME_NS)["taken_at_source"] == "mtime"
    assert capture_facts(b"not an image", None) == {}
    png = capture_facts(photo(when="2020:01:02 03:04:05", make="X", fmt="PNG"), MTIME_NS)
    assert png["taken_at"] == "2020-01-02T03:04:05+00:00"


def test_prepare_file_carries_the_capture_fields(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(photo(when="2023:06:01 12:30:45", offset="+02:00", make="Canon"))
    data, _digest, width, height, reason, capture = prepare_file(os.fsencode(path), 10**8, None)
    assert reason == b"" and (width, height) == (16, 12) and data
    facts = json.loads(capture)
    assert facts == {"camera_make": "Canon", "taken_at": "2023-06-01T10:30:45+00:00",
                     "taken_at_source": "exif"}  # fmt: skip
    broken = tmp_path / "b.jpg"
    broken.write_bytes(b"junk")
    assert prepare_file(os.fsencode(broken), 10**8, None)[4] != b""


class PixelEncoders(FakeEncoders):
    """FakeEncoders keyed by the decoded pixels (files with EXIF carry no PNG text chunk)."""

    def encode_image_bytes(self, blobs: Sequence[bytes]) -> np.ndarray:
        keys = [hashlib.sha256(Image.open(io.BytesIO(b)).tobytes()).hexdigest() for b in blobs]
        return np.stack([self._vector(k) for k in keys])


PARIS = ("N", (48.0, 51.0, 0.0), "E", (2.0, 21.0, 0.0))


def _photos(root: Path) -> None:
    files = {
        "2023/paris/a.jpg": photo(when="2023:06:01 12:30:45", offset="+02:00", make="Canon",
                                  model="EOS 5D", gps=PARIS, colour=(200, 0, 0)),
        "2023/b.jpg": photo(when="2023:07:01 08:00:00", colour=(0, 200, 0)),
        "c.png": photo(colour=(0, 0, 200), fmt="PNG"),
    }  # fmt: skip
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    os.utime(root / "c.png", ns=(MTIME_NS, MTIME_NS))


def test_capture_fields_reach_the_index_and_the_hits(tmp_path: Path) -> None:
    _photos(tmp_path / "photos")
    source = FilesSource(lambda: walk_images_dir(tmp_path / "photos"), {"kind": "folder"})
    build(source, tmp_path / "idx", IndexPolicy("flat"), BuildOptions(), PixelEncoders())
    loaded = load_index(tmp_path / "idx")
    table = loaded.image_table
    assert table.schema.field("taken_at").type == TIMESTAMP
    assert table.schema.field("lat").type == pa.float64()
    rows = {r["image_id"]: r for r in table.to_pylist()}
    a, b, c = rows["2023/paris/a.jpg"], rows["2023/b.jpg"], rows["c.png"]
    assert a["taken_at"] == dt.datetime(2023, 6, 1, 10, 30, 45, tzinfo=UTC)
    assert (a["taken_at_source"], a["camera_make"], a["camera_model"]) == (
        "exif",
        "Canon",
        "EOS 5D",
    )
    assert (a["lat"], a["lon"], a["folder"]) == (
        pytest.approx(48.85),
        pytest.approx(2.35),
        "2023/paris",
    )
    assert (b["taken_at_source"], b["camera_make"], b["lat"], b["folder"]) == (
        "exif",
        None,
        None,
        "2023",
    )
    assert c["taken_at"] == dt.datetime(2023, 11, 14, 22, 13, 20, 250000, tzinfo=UTC)
    assert (c["taken_at_source"], c["folder"]) == ("mtime", "")
    assert os.fsdecode(c["source"]) == str(tmp_path / "photos" / "c.png")
    hits = image_hits(loaded, top_images(loaded, unit_vectors(1), 3)[0])
    hit = next(h for h in hits if h.image_id == "2023/paris/a.jpg")
    assert (hit.taken_at, hit.taken_at_source) == ("2023-06-01T10:30:45+00:00", "exif")
    assert (hit.folder, hit.camera_make, hit.camera_model) == ("2023/paris", "Canon", "EOS 5D")
    assert hit.lat == pytest.approx(48.85) and hit.lon == pytest.approx(2.35)


# --------------------------------------------------------------------------- typed columns

ROWS = [
    {"path": "a.jpg", "n": "1", "x": "1.5", "ok": "true", "day": "2023-06-01",
     "when": "2023-06-01T12:00:00+02:00", "mixed": "7", "note": "hi"},
    {"path": "b.jpg", "n": "-20", "x": "2", "ok": "FALSE", "day": "2024-01-31",
     "when": "2023-06-02 08:00", "mixed": "seven", "note": ""},
    {"path": "c.jpg", "n": "", "x": "", "ok": "", "day": "", "when": "", "mixed": "",
     "note": "3"},
]  # fmt: skip
WANT = [
    {"n": 1, "x": 1.5, "ok": True, "day": dt.datetime(2023, 6, 1, tzinfo=UTC),
     "when": dt.datetime(2023, 6, 1, 10, tzinfo=UTC), "mixed": "7", "note": "hi"},
    {"n": -20, "x": 2.0, "ok": False, "day": dt.datetime(2024, 1, 31, tzinfo=UTC),
     "when": dt.datetime(2023, 6, 2, 8, tzinfo=UTC), "mixed": "seven", "note": None},
    {"n": None, "x": None, "ok": None, "day": None, "when": None, "mixed": None, "note": "3"},
]  # fmt: skip


def test_csv_columns_are_typed_over_the_whole_column(tmp_path: Path) -> None:
    with open(tmp_path / "l.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(ROWS[0]))
        writer.writeheader()
        writer.writerows(ROWS)
    assert [i.meta for i in read_list(tmp_path / "l.csv")] == WANT
    # A cell late in the file decides the type of the whole column, deterministically.
    assert column_kinds([{"v": "1"}, {"v": "2"}, {"v": "x"}], text=True) == {"v": "string"}
    assert column_kinds([{"v": "1"}, {"v": "2.5"}], text=True) == {"v": "float"}
    assert column_kinds([{"v": ""}], text=True) == {"v": "bool"}  # no value: any type fits
    assert column_kinds([{"zip": "02139"}, {"zip": "94110"}], text=True) == {"zip": "string"}
    assert column_kinds([{"v": "0"}, {"v": "0.5"}, {"v": "-3"}], text=True) == {"v": "float"}


def test_jsonl_values_keep_their_json_types(tmp_path: Path) -> None:
    lines = [
        {"path": "a.jpg", "n": 1, "x": 1, "ok": True, "day": "2023-06-01", "tags": ["a", "b"],
         "mixed": 7, "note": "hi"},
        {"path": "b.jpg", "n": -20, "x": 2.5, "ok": False, "day": "2024-01-31T00:00:00Z",
         "tags": None, "mixed": "seven", "note": None},
    ]  # fmt: skip
    (tmp_path / "l.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    got = [i.meta for i in read_list(tmp_path / "l.jsonl")]
    assert got[0] == {"n": 1, "x": 1.0, "ok": True, "day": dt.datetime(2023, 6, 1, tzinfo=UTC),
                      "tags": '["a", "b"]', "mixed": "7", "note": "hi"}  # fmt: skip
    assert got[1]["x"] == 2.5 and got[1]["mixed"] == "seven" and got[1]["tags"] is None
    assert got[1]["day"] == dt.datetime(2024, 1, 31, tzinfo=UTC)
    assert isinstance(got[0]["x"], float)


def test_parquet_keeps_its_types(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({
        "path": ["a.jpg", "b.jpg"],
        "n": pa.array([1, None], pa.int32()),
        "x": [1.5, 2.0],
        "ok": [True, False],
        "when": pa.array([dt.datetime(2023, 6, 1, 12), None], pa.timestamp("ms")),
        "code": ["0012", "7"],  # text stays text in Parquet
    })  # fmt: skip
    pq.write_table(table, tmp_path / "l.parquet")
    got = [i.meta for i in read_list(tmp_path / "l.parquet")]
    assert got == [
        {"n": 1, "x": 1.5, "ok": True, "when": dt.datetime(2023, 6, 1, 12, tzinfo=UTC),
         "code": "0012"},
        {"n": None, "x": 2.0, "ok": False, "when": None, "code": "7"},
    ]  # fmt: skip


def _typed_index(out: Path, *, timestamps: bool = True) -> None:
    im, records, caps, cap_records = collection(3)
    # The JSON format has no timestamps: an index of before holds their text.
    metas = [{k: v for k, v in w.items() if timestamps or k not in ("day", "when")} for w in WANT]
    records = [NewImage(r.image_id, None, meta=m) for r, m in zip(records, metas, strict=True)]
    build_index_dir(out, im, records, caps, cap_records, model_hash="m", policy=IndexPolicy("flat"))


def test_typed_columns_in_the_index_and_its_filters(tmp_path: Path) -> None:
    _typed_index(tmp_path / "idx")
    loaded = load_index(tmp_path / "idx")
    types = {f.name: f.type for f in loaded.image_table.schema}
    assert types["meta.n"] == pa.int64() and types["meta.x"] == pa.float64()
    assert types["meta.ok"] == pa.bool_() and types["meta.day"] == TIMESTAMP
    assert types["meta.when"] == TIMESTAMP and types["meta.note"] == pa.string()
    assert types["image_id"] == pa.string() and types["aliases"] == pa.list_(pa.string())
    assert "id_order" not in types and "caption_start" not in types
    kinds = {name: f.kind for name, f in filter_fields(loaded.image_table).items()}
    assert kinds["n"] == "int" and kinds["day"] == "timestamp" and kinds["taken_at"] == "timestamp"
    assert loaded.image_records[0].meta == WANT[0]
    hit = image_hits(loaded, top_images(loaded, unit_vectors(1), 3)[0])[0]
    assert hit.meta is not None and isinstance(hit.meta["day"], str | type(None))
    # Adding an image with the same columns keeps their types; removing keeps them too.
    new = [NewImage("new.jpg", None, meta={"n": 5, "x": 0.5, "day": WANT[0]["day"]})]
    add_to_index(tmp_path / "idx", unit_vectors(1, seed=9), new, np.zeros((0, 16)), [])
    after = load_index(tmp_path / "idx")
    assert after.image_table.schema.field("meta.n").type == pa.int64()
    assert after.image_records[3].meta == {**dict.fromkeys(WANT[0]), "n": 5, "x": 0.5,
                                           "day": WANT[0]["day"]}  # fmt: skip
    remove_from_index(tmp_path / "idx", ["img0001.jpg"])
    final = load_index(tmp_path / "idx")
    assert list(final.image_ids) == ["img0000.jpg", "img0002.jpg", "new.jpg"]
    assert final.image_table.schema.field("meta.day").type == TIMESTAMP
    assert final.captions_of(1) == [f"caption {j} of img0002.jpg" for j in range(5)]
    assert final.caption_image_rows.tolist() == [0] * 5 + [1] * 5


# --------------------------------------------------------------------------- columns


def test_records_are_memory_mapped_views(tmp_path: Path) -> None:
    make_index(tmp_path / "idx", 30)
    loaded = load_index(tmp_path / "idx")
    assert _is_mapped(tmp_path / "idx" / "images.arrow") is not False
    assert _is_mapped(tmp_path / "idx" / "captions.arrow") is not False
    ids = [f"img{i:04d}.jpg" for i in range(30)]
    assert len(loaded.image_ids) == 30 and loaded.image_ids == ids and ids == loaded.image_ids
    assert loaded.image_ids[-1] == ids[-1] and loaded.image_ids[3:6] == ids[3:6]
    assert list(loaded.image_ids) == ids and loaded.image_ids.index("img0007.jpg") == 7
    assert loaded.captions[5] == "caption 0 of img0001.jpg" and "caption 4 of img0029.jpg" in (
        loaded.captions
    )
    with pytest.raises(IndexError):
        loaded.image_ids[30]
    assert all(loaded.image_row(i) == n for n, i in enumerate(ids))
    assert loaded.image_row("img9999.jpg") is None and loaded.image_row("") is None
    assert loaded.image_row("a") is None and loaded.image_row("zzz") is None
    assert loaded.image_records[2].image_id == "img0002.jpg" and loaded.image_records[2].path
    assert dict(loaded.images_by_alias) == {}


def test_alias_lookup(tmp_path: Path) -> None:
    im, records, caps, cap_records = collection(4)
    records[1] = NewImage(records[1].image_id, None, aliases=("copy/b.jpg", "a-copy.jpg"))
    records[3] = NewImage(records[3].image_id, None, aliases=("z.jpg",))
    build_index_dir(tmp_path / "idx", im, records, caps, cap_records, model_hash="m",
                    policy=IndexPolicy("flat"))  # fmt: skip
    loaded = load_index(tmp_path / "idx")
    want = {"copy/b.jpg": "img0001.jpg", "a-copy.jpg": "img0001.jpg", "z.jpg": "img0003.jpg"}
    assert dict(loaded.images_by_alias) == want
    assert "z.jpg" in loaded.images_by_alias and "img0001.jpg" not in loaded.images_by_alias
    remove_from_index(tmp_path / "idx", ["a-copy.jpg"])
    assert dict(load_index(tmp_path / "idx").images_by_alias) == {
        "copy/b.jpg": "img0001.jpg", "z.jpg": "img0003.jpg"}  # fmt: skip


def _same(a: object, b: object) -> None:
    from index.store import LoadedIndex

    assert isinstance(a, LoadedIndex) and isinstance(b, LoadedIndex)
    assert a.image_ids == b.image_ids and a.image_paths == b.image_paths
    assert a.captions == b.captions and a.caption_ids == b.caption_ids
    np.testing.assert_array_equal(a.caption_image_rows, b.caption_image_rows)
    assert list(a.image_records) == list(b.image_records)
    assert a.image_table.equals(b.image_table)
    q = unit_vectors(4, seed=3)
    found_a, found_b = top_images(a, q, 5), top_images(b, q, 5)
    for x, y in zip(found_a, found_b, strict=True):
        assert image_hits(a, x) == image_hits(b, y)


def test_an_index_of_the_json_format_loads_serves_and_converts(tmp_path: Path) -> None:
    _typed_index(tmp_path / "idx", timestamps=False)
    new = load_index(tmp_path / "idx")
    to_json_format(tmp_path / "idx")
    old = load_index(tmp_path / "idx")
    assert old.manifest["format"] == "vsepp-index/1"
    _same(old, new)
    assert convert.main(["--index_dir", str(tmp_path / "idx")]) == 0
    converted = load_index(tmp_path / "idx")
    assert converted.manifest["format"] == "vsepp-index/2"
    assert converted.manifest["converted_from"]["format"] == "vsepp-index/1"
    assert not (tmp_path / "idx" / "images.json").exists()
    assert {"images.arrow", "captions.arrow", "images.faiss"} <= set(converted.manifest["files"])
    _same(converted, new)
    assert convert_index_dir(tmp_path / "idx") is None  # already columnar


def test_convert_keeps_image_copies(tmp_path: Path) -> None:
    make_index(tmp_path / "idx", 6)
    to_json_format(tmp_path / "idx")
    assert convert.main(["--index_dir", str(tmp_path / "idx")]) == 0
    loaded = load_index(tmp_path / "idx")
    assert loaded.image_file("img0004.jpg") == (tmp_path / "idx/images/img0004.jpg").resolve()


def _resize(path: Path, data: bytes) -> None:
    """Write `data` to `path` and fix its size in the manifest (only the contents are bad)."""
    path.write_bytes(data)
    manifest_path = path.parent / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][path.name]["bytes"] = len(data)
    manifest_path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("name", ["images.arrow", "captions.arrow"])
def test_a_corrupt_or_truncated_arrow_file_is_named(tmp_path: Path, name: str) -> None:
    make_index(tmp_path / "idx", 6)
    path = tmp_path / "idx" / name
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexDirError, match=rf"{name}: \d+ bytes, the manifest says"):
        load_index(tmp_path / "idx")
    _resize(path, data[: len(data) // 2])
    with pytest.raises(IndexDirError, match=rf"{name}: not a readable Arrow IPC file"):
        load_index(tmp_path / "idx")
    _resize(path, b"\x00garbage" * (len(data) // 8))
    with pytest.raises(IndexDirError, match=rf"{name}: not a readable Arrow IPC file"):
        load_index(tmp_path / "idx")


def test_an_arrow_file_with_bad_columns_is_named(tmp_path: Path) -> None:
    from index.columnar import write_table

    make_index(tmp_path / "idx", 6)
    path = tmp_path / "idx" / "captions.arrow"
    captions = load_index(tmp_path / "idx")._caption_records
    write_table(path, captions.drop_columns(["text"]))
    _resize(path, path.read_bytes())
    with pytest.raises(IndexDirError, match=r"captions.arrow: no column 'text'"):
        load_index(tmp_path / "idx")
    bad = captions.set_column(1, "image_row", pa.array([99] * captions.num_rows, pa.int64()))
    write_table(path, bad)
    _resize(path, path.read_bytes())
    with pytest.raises(IndexDirError, match=r"captions.arrow: column 'image_row' holds 99..99"):
        load_index(tmp_path / "idx")
