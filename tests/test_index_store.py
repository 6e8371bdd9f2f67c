"""index.store: round trip, atomic writes, refusals, and image_file's path checks."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from index import store
from index.columnar import with_lookup_columns
from index.faiss_index import build_index
from index.records import image_table
from index.search import image_hits, top_images
from index.store import (
    CaptionRecord,
    ImageRecord,
    IndexDirError,
    IndexFileMissingError,
    IndexPart,
    ModelMismatchError,
    load_index,
    write_index_dir,
)
from tests.index_helpers import (
    faiss_threads,
    fake_image,
    leftovers,
    make_index,
    rewrite_arrow,
    rewrite_json,
    to_json_format,
    unit_vectors,
)
from vsepp import atomic


@pytest.fixture(autouse=True)
def _one_faiss_thread() -> Iterator[None]:
    with faiss_threads(1):
        yield


PARAMS = {
    "flat": {},
    "hnsw": {"M": 8, "efSearch": 32},
    "ivf": {"nprobe": 2},
    "ivfpq": {"m": 4, "nbits": 4, "nprobe": 4, "k_factor": 4},
}


def _write(out: Path, n: int, index_type: str, seed: int = 0) -> tuple[IndexPart, IndexPart]:
    """Write an index directory from explicitly built parts (kept for comparison)."""
    im = unit_vectors(n, seed=seed)
    caps = unit_vectors(5 * n, seed=seed + 1)
    parts = []
    for x in (im, caps):
        index, info = build_index(x, index_type, **PARAMS[index_type])
        parts.append(IndexPart(index, dict(info, recall_at_10=None), vectors=x))
    write_index_dir(
        out,
        images=parts[0],
        captions=parts[1],
        image_records=[ImageRecord(f"i{r}", None) for r in range(n)],
        caption_records=[
            CaptionRecord(f"i{j // 5}#{j % 5}", j // 5, f"c{j}") for j in range(5 * n)
        ],
        model_hash="model-a",
    )
    return parts[0], parts[1]


@pytest.mark.parametrize("index_type", sorted(PARAMS))
def test_round_trip_same_results_with_and_without_mmap(tmp_path: Path, index_type: str) -> None:
    n = 1000 if index_type == "ivfpq" else 300  # 4-bit PQ wants 624 training points
    images, captions = _write(tmp_path / "idx", n, index_type)
    q = unit_vectors(25, seed=99)
    mapped = load_index(tmp_path / "idx")
    read = load_index(tmp_path / "idx", mmap=False)
    assert mapped.load_modes == {"images": "mmap", "captions": "mmap"}
    assert read.load_modes == {"images": "read", "captions": "read"}
    for part, name in ((images, "search_images"), (captions, "search_captions")):
        want_scores, want_rows = part.index.search(q, 7)
        for loaded in (mapped, read):
            scores, rows = getattr(loaded, name)(q, 7)
            assert scores.dtype == np.float32 and rows.dtype == np.int64
            np.testing.assert_array_equal(rows, want_rows)
            np.testing.assert_allclose(scores, want_scores, rtol=1e-6)
    assert mapped.manifest["images"]["params"] == read.manifest["images"]["params"]


def test_flat_index_directory_is_brute_force(tmp_path: Path) -> None:
    make_index(tmp_path / "idx", 40)
    loaded = load_index(tmp_path / "idx")
    im = loaded.vectors("images")
    q = unit_vectors(5, seed=3) * 3.0  # query norm must not matter: scores are cosines
    scores, rows = loaded.search_images(q, 10)
    sims = (q / 3.0) @ im.T
    np.testing.assert_array_equal(rows, np.argsort(-sims, axis=1)[:, :10])
    np.testing.assert_allclose(scores, np.sort(sims, axis=1)[:, ::-1][:, :10], rtol=1e-5)
    # A single 1-D query works too; k is clipped to the collection size.
    s1, r1 = loaded.search_images(q[0] / 3.0, 500)
    assert s1.shape == (1, 40) and r1.shape == (1, 40)
    assert np.all(np.diff(s1[0]) <= 1e-6)


def test_manifest_and_metadata(tmp_path: Path) -> None:
    manifest = make_index(tmp_path / "idx", 12)
    loaded = load_index(tmp_path / "idx")
    assert manifest["format"] == "vsepp-index/2" and manifest["metric"] == "inner_product"
    assert manifest["images"]["count"] == 12 and manifest["captions"]["count"] == 60
    assert manifest["images"]["index_type"] == "flat"
    assert manifest["images"]["recall_at_10"] == 1.0
    assert set(manifest["files"]) == {
        "images.faiss",
        "captions.faiss",
        "images.arrow",
        "captions.arrow",
    }
    assert loaded.image_ids[3] == "img0003.jpg"
    assert loaded.captions_of(3) == [f"caption {j} of img0003.jpg" for j in range(5)]
    assert loaded.caption_ids[16] == "img0003.jpg#1"
    assert loaded.caption_image_rows.tolist() == [i // 5 for i in range(60)]
    with pytest.raises(IndexError, match=r"image row 12"):
        loaded.captions_of(12)
    assert (tmp_path / "idx" / "images" / "img0003.jpg").read_bytes() == fake_image("img0003.jpg")
    assert not list(tmp_path.glob("*.pkl")) and not list((tmp_path / "idx").glob("*.pkl"))


def test_search_input_errors(tmp_path: Path) -> None:
    make_index(tmp_path / "idx", 10)
    loaded = load_index(tmp_path / "idx")
    with pytest.raises(ValueError, match=r"dim 16"):
        loaded.search_images(np.zeros((1, 8), np.float32), 3)
    with pytest.raises(ValueError, match=r"k=0"):
        loaded.search_images(unit_vectors(1), 0)
    with pytest.raises(ValueError, match=r"NaN"):
        loaded.search_captions(np.full((1, 16), np.nan, np.float32), 3)


def test_missing_hits_are_trimmed(tmp_path: Path) -> None:
    """An IVF probing one list of many cannot fill k = n: the store gives FAISS's answer
    (padded with row -1) and the search drops the padding, so no -1 row reaches a caller."""
    im = unit_vectors(400, seed=4)
    index, info = build_index(im, "ivf", nlist=8, nprobe=1)
    write_index_dir(
        tmp_path / "idx",
        images=IndexPart(index, info),
        captions=IndexPart(*build_index(im, "flat")),
        image_records=[ImageRecord(f"i{r}", None) for r in range(400)],
        caption_records=[CaptionRecord(f"c{r}", r, "t") for r in range(400)],
        model_hash="m",
    )
    loaded = load_index(tmp_path / "idx")
    _, padded = loaded.search_images(im[:20], 400)
    assert padded.shape == (20, 400) and (padded < 0).any()
    found = top_images(loaded, im[:20], 400)
    assert [len(f.rows) for f in found] == [int((row >= 0).sum()) for row in padded]
    assert all(0 < len(f.rows) < 400 and (f.rows >= 0).all() for f in found)
    assert all(np.isfinite(f.scores).all() and (np.diff(f.scores) <= 1e-6).all() for f in found)
    assert image_hits(loaded, found[0])[0].image_id == "i0"


# --------------------------------------------------------------------------- image_file


def test_image_file_only_serves_listed_images(tmp_path: Path) -> None:
    make_index(tmp_path / "idx", 5)
    loaded = load_index(tmp_path / "idx")
    root = (tmp_path / "idx" / "images").resolve()
    assert loaded.image_file("img0002.jpg") == root / "img0002.jpg"
    (tmp_path / "secret.txt").write_text("no")
    for bad in [
        "../secret.txt",
        "../../secret.txt",
        "..%2Fsecret.txt",
        "..%2F..%2Fmanifest.json",
        "%2e%2e/secret.txt",
        "img0002.jpg/../../manifest.json",
        "images/../manifest.json",
        str(tmp_path / "secret.txt"),
        "/etc/passwd",
        "manifest.json",
        "img9999.jpg",
        "IMG0002.JPG",
        "",
        "img0002.jpg\x00",
    ]:
        assert loaded.image_file(bad) is None, bad
    assert loaded.image_file(None) is None  # type: ignore[arg-type]


def test_image_file_refuses_tampered_paths(tmp_path: Path) -> None:
    make_index(tmp_path / "idx", 4)
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(b"x")
    os.symlink(outside, tmp_path / "idx" / "images" / "link.jpg")
    tampered = [
        ImageRecord("a", "../manifest.json"),
        ImageRecord("b", str(outside)),
        ImageRecord("c", "link.jpg"),
        ImageRecord("d", None),
    ]
    loaded = load_index(tmp_path / "idx")
    images, _ = with_lookup_columns(image_table(tampered), loaded.caption_table)
    rewrite_arrow(tmp_path / "idx", "images.arrow", images)
    loaded = load_index(tmp_path / "idx")
    for image_id in "abcd":
        assert loaded.image_file(image_id) is None, image_id
    # The same in an index of the JSON format.
    make_index(tmp_path / "idx", 4)
    to_json_format(tmp_path / "idx")
    rewrite_json(tmp_path / "idx", "images.json", [r.to_json() for r in tampered])
    loaded = load_index(tmp_path / "idx")
    for image_id in "abcd":
        assert loaded.image_file(image_id) is None, image_id


# --------------------------------------------------------------------------- atomicity


def _fingerprint(index_dir: Path) -> tuple[str, list[list[int]]]:
    loaded = load_index(index_dir)
    return loaded.manifest["build_id"], loaded.search_images(unit_vectors(3, seed=5), 5)[1].tolist()


def test_failed_metadata_write_leaves_old_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_index(tmp_path / "idx", 10)
    before = _fingerprint(tmp_path / "idx")
    real = store.write_table

    def failing(path: Path, table: pa.Table) -> None:
        real(path, table)
        if path.name == "captions.arrow":
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "write_table", failing)
    with pytest.raises(OSError, match=r"No space"):
        make_index(tmp_path / "idx", 20, seed=1)
    assert _fingerprint(tmp_path / "idx") == before
    assert leftovers(tmp_path) == []


def test_failed_swap_leaves_old_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_index(tmp_path / "idx", 10)
    before = _fingerprint(tmp_path / "idx")

    def failing(a: Path, b: Path) -> bool:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(atomic, "_exchange", failing)
    with pytest.raises(OSError, match=r"I/O error"):
        make_index(tmp_path / "idx", 20, seed=1)
    assert _fingerprint(tmp_path / "idx") == before
    assert leftovers(tmp_path) == []


def test_rename_fallback_swaps_and_rolls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without renameat2: rename old aside, new in; if the second rename fails, undo."""
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    make_index(tmp_path / "idx", 10)
    make_index(tmp_path / "idx", 20, seed=1)
    assert len(load_index(tmp_path / "idx").image_ids) == 20
    assert leftovers(tmp_path) == []
    before = _fingerprint(tmp_path / "idx")

    real_rename = os.rename

    def rename(src: Path, dst: Path) -> None:
        if Path(src).name.startswith(".idx.tmp-"):
            raise OSError(5, "I/O error")
        real_rename(src, dst)

    monkeypatch.setattr(atomic.os, "rename", rename)
    with pytest.raises(OSError, match=r"I/O error"):
        make_index(tmp_path / "idx", 30, seed=2)
    assert _fingerprint(tmp_path / "idx") == before
    assert leftovers(tmp_path) == []


def test_failed_first_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(store, "_place_image", failing)
    with pytest.raises(RuntimeError, match=r"boom"):
        make_index(tmp_path / "idx", 5)
    assert not (tmp_path / "idx").exists()
    assert leftovers(tmp_path) == []


def test_leftovers_of_a_killed_writer_are_swept(tmp_path: Path) -> None:
    make_index(tmp_path / "idx", 5)
    (tmp_path / ".idx.tmp-dead").mkdir()
    (tmp_path / ".idx.tmp-dead" / "images.faiss").write_bytes(b"partial")
    make_index(tmp_path / "idx", 6)
    assert leftovers(tmp_path) == []


def test_interrupted_swap_is_reported(tmp_path: Path) -> None:
    make_index(tmp_path / "idx", 5)
    os.rename(tmp_path / "idx", tmp_path / ".idx.old-abc")  # as if killed between renames
    with pytest.raises(IndexFileMissingError, match=r"previous index at .*\.idx\.old-abc"):
        load_index(tmp_path / "idx")


def test_load_retries_when_swapped_mid_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer swapping the directory during a load makes the loader start over."""
    make_index(tmp_path / "idx", 5)
    real = store.read_manifest
    calls: list[int] = []

    def swapped_once(index_dir: Path) -> dict:
        manifest = real(index_dir)
        calls.append(1)
        if len(calls) == 2:  # the re-check after the first load sees another build
            return dict(manifest, build_id="someone-else")
        return manifest

    monkeypatch.setattr(store, "read_manifest", swapped_once)
    loaded = load_index(tmp_path / "idx")
    assert len(calls) == 4 and len(loaded.image_ids) == 5


def test_written_directory_is_world_readable(tmp_path: Path) -> None:
    make_index(tmp_path / "idx", 3)
    assert (tmp_path / "idx").stat().st_mode & 0o755 == 0o755


# --------------------------------------------------------------------------- refusals


def test_model_hash_mismatch_names_both(tmp_path: Path) -> None:
    make_index(tmp_path / "idx", 5)
    with pytest.raises(ModelMismatchError, match=r"model model-a.*is model-b"):
        load_index(tmp_path / "idx", expected_model_hash="model-b")
    assert load_index(tmp_path / "idx", expected_model_hash="model-a").model_hash == "model-a"


def test_missing_directory_and_files(tmp_path: Path) -> None:
    with pytest.raises(IndexFileMissingError, match=r"does not exist"):
        load_index(tmp_path / "nope")
    make_index(tmp_path / "idx", 5)
    (tmp_path / "idx" / "captions.faiss").unlink()
    with pytest.raises(IndexFileMissingError, match=r"missing captions.faiss"):
        load_index(tmp_path / "idx")
    (tmp_path / "idx" / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing manifest.json"):
        load_index(tmp_path / "idx")


def test_truncated_and_corrupt_faiss_files(tmp_path: Path) -> None:
    make_index(tmp_path / "idx", 5)
    path = tmp_path / "idx" / "images.faiss"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexDirError, match=r"images.faiss: \d+ bytes, the manifest says"):
        load_index(tmp_path / "idx")
    path.write_bytes(b"\x00garbage" * (len(data) // 8) + b"\x00" * (len(data) % 8))
    for mmap in (True, False):
        with pytest.raises(IndexDirError, match=r"images.faiss: not a readable FAISS index"):
            load_index(tmp_path / "idx", mmap=mmap)


def test_wrong_format_and_bad_json(tmp_path: Path) -> None:
    make_index(tmp_path / "idx", 5)
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    rewrite_json(tmp_path / "idx", "manifest.json", dict(manifest, format="vsepp-index/9"))
    with pytest.raises(IndexDirError, match=r"unsupported format 'vsepp-index/9'"):
        load_index(tmp_path / "idx")
    rewrite_json(
        tmp_path / "idx", "manifest.json", {k: v for k, v in manifest.items() if k != "dim"}
    )
    with pytest.raises(IndexDirError, match=r"missing field 'dim'"):
        load_index(tmp_path / "idx")
    rewrite_json(tmp_path / "idx", "manifest.json", manifest)
    to_json_format(tmp_path / "idx")
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    (tmp_path / "idx" / "captions.json").write_text("[{" + " " * 20000)
    manifest["files"]["captions.json"]["bytes"] = (
        (tmp_path / "idx" / "captions.json").stat().st_size
    )
    rewrite_json(tmp_path / "idx", "manifest.json", manifest)
    with pytest.raises(IndexDirError, match=r"captions.json: not valid JSON"):
        load_index(tmp_path / "idx")


def test_counts_that_disagree(tmp_path: Path) -> None:
    """In an index of the JSON format (the Arrow one: test_records.py)."""
    make_index(tmp_path / "idx", 6)
    idx = tmp_path / "idx"
    to_json_format(idx)
    images = json.loads((idx / "images.json").read_text())
    rewrite_json(idx, "images.json", images[:-1])
    with pytest.raises(IndexDirError, match=r"manifest images.count=6 but images.json has 5"):
        load_index(idx)
    # Metadata consistent with the manifest, but not with the FAISS file.
    captions = json.loads((idx / "captions.json").read_text())
    rewrite_json(idx, "captions.json", captions[:25])
    manifest = json.loads((idx / "manifest.json").read_text())
    manifest["images"]["count"], manifest["captions"]["count"] = 5, 25
    rewrite_json(idx, "manifest.json", manifest)
    with pytest.raises(IndexDirError, match=r"images.faiss: holds 6 vectors but images.json has 5"):
        load_index(idx)
    # A caption pointing at an image row that does not exist.
    make_index(idx, 6)
    to_json_format(idx)
    captions = json.loads((idx / "captions.json").read_text())
    captions[0]["image_row"] = 99
    rewrite_json(idx, "captions.json", captions)
    with pytest.raises(IndexDirError, match=r"captions.json \[0\]: image_row 99"):
        load_index(idx)


def test_write_refuses_inconsistent_input(tmp_path: Path) -> None:
    im = unit_vectors(4)
    part = IndexPart(*build_index(im, "flat"))
    recs = [ImageRecord(f"i{r}", None) for r in range(4)]
    caps = [CaptionRecord("c", 0, "t")] * 4
    with pytest.raises(ValueError, match=r"holds 4 vectors but 3 records"):
        write_index_dir(
            tmp_path / "x",
            images=part,
            captions=part,
            image_records=recs[:3],
            caption_records=caps,
            model_hash="m",
        )
    with pytest.raises(ValueError, match=r"'i0' appears more than once"):
        write_index_dir(
            tmp_path / "x",
            images=part,
            captions=part,
            image_records=[recs[0]] * 4,
            caption_records=caps,
            model_hash="m",
        )
    with pytest.raises(ValueError, match=r"not a plain relative path"):
        write_index_dir(
            tmp_path / "x",
            images=part,
            captions=part,
            image_records=[ImageRecord("a", "../a"), *recs[1:]],
            caption_records=caps,
            model_hash="m",
            image_files={"a": tmp_path},
        )
    assert not (tmp_path / "x").exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("rows", [[], [{"image_id": "a", "path": None}], [{"t": "é\udcff"}, {}]])
def test_json_rows_read_back_as_the_list_written(tmp_path: Path, rows: list[dict]) -> None:
    """images.json / captions.json are written row by row; readers see one JSON list."""
    store._write_json_rows(tmp_path / "rows.json", iter(rows), ascii_only=True)
    text = (tmp_path / "rows.json").read_text(encoding="ascii")
    assert json.loads(text) == rows and text.endswith("\n")
