"""Embedding on Apache Beam (`index.beam_embed`) gives the shards `index.build` makes itself.

The pipeline runs on Beam's local runner with 2 worker processes, over a generated folder
with nested folders, duplicates (one within a shard, one across shards) and broken files,
on an untrained exported model (the test is about the path of the vectors).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from index import __main__ as index_main
from index import build
from index.shards import read_shards
from index.store import load_index
from tests.conftest import require
from tests.image_files import photo, quirky_images
from tests.model_helpers import export_untrained
from tests.service_helpers import image_bytes

SHARD_SIZE = 4


def _require_beam() -> None:
    require(importlib.util.find_spec("apache_beam") is not None, "apache-beam (the beam extra)")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_untrained(tmp_path_factory.mktemp("beam-model") / "m")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """18 files in nested folders: 14 images, 2 copies of them, 2 unusable files."""
    root = tmp_path_factory.mktemp("beam-src") / "photos"
    kinds = quirky_images()
    for i, (name, data) in enumerate(sorted(kinds.items())):
        (root / f"kind{i % 3}" / ("deep" if i % 2 else "")).mkdir(parents=True, exist_ok=True)
        (root / f"kind{i % 3}" / ("deep" if i % 2 else "") / name).write_bytes(data)
    (root / "a-first" / "nested").mkdir(parents=True)
    (root / "a-first" / "nested" / "trip.jpg").write_bytes(image_bytes(photo(120, 90, 9), "JPEG"))
    # Sorted walk order: a-first/... (shard 0) comes before both copies.
    (root / "a-first" / "trip copy.jpg").write_bytes(image_bytes(photo(120, 90, 9), "JPEG"))
    (root / "zz-copy of baseline.jpg").write_bytes(kinds["baseline.jpg"])  # the last shard
    (root / "a-first" / "empty.jpg").write_bytes(b"")
    (root / "kind1" / "notes.png").write_bytes(b"not a picture at all\n")
    return root


def _shard_bodies(root: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(root.glob("shard-*.json"))]


def test_beam_shards_equal_the_in_process_ones(model: Path, folder: Path, tmp_path: Path) -> None:
    _require_beam()
    local, beam = tmp_path / "local-shards", tmp_path / "beam-shards"
    common = ["--model_dir", str(model), "--images_dir", str(folder),
              "--shard_size", str(SHARD_SIZE), "--batch_size", "3"]  # fmt: skip
    assert build.main([*common, "--index_dir", str(tmp_path / "local"),
                       "--shards_dir", str(local), "--keep_shards"]) == 0  # fmt: skip
    # Through `vsepp-index beam_embed`, on the default local runner (2 worker processes).
    assert index_main.main(["beam_embed", *common, "--out_dir", str(beam)]) == 0

    assert json.loads((beam / "shards.json").read_text()) == json.loads(
        (local / "shards.json").read_text()
    )
    bodies = _shard_bodies(beam)
    assert bodies == _shard_bodies(local)  # ids, files, sha256, skip reasons, duplicates
    assert len(bodies) == 5 and sum(len(b["seen"]) for b in bodies) == 18
    duplicates = [d for b in bodies for d in b["duplicates"]]
    assert {d["image_id"]: d["of"] for d in duplicates} == {
        "a-first/trip copy.jpg": "a-first/nested/trip.jpg",
        "zz-copy of baseline.jpg": next(
            r["image_id"]
            for b in bodies
            for r in b["images"]
            if r["image_id"].endswith("baseline.jpg")
        ),
    }
    skipped = {s["image_id"]: s["reason"].split(":")[0] for b in bodies for s in b["skipped"]}
    assert skipped == {"a-first/empty.jpg": "empty", "kind1/notes.png": "not_an_image"}
    for ours, theirs in zip(read_shards(beam), read_shards(local), strict=True):
        for a, b in (
            (ours.vectors, theirs.vectors),
            (ours.caption_vectors, theirs.caption_vectors),
        ):
            assert a.shape == b.shape
            if len(a):
                assert (np.sum(a * b, axis=1) >= 0.9999).all()

    # The Beam output indexes as the in-process shards did.
    assert build.main(["--model_dir", str(model), "--from_shards", str(beam),
                       "--index_dir", str(tmp_path / "from-beam")]) == 0  # fmt: skip
    got, want = load_index(tmp_path / "from-beam"), load_index(tmp_path / "local")
    assert got.image_ids == want.image_ids and len(got.image_ids) == 14
    assert got.images_by_alias == want.images_by_alias and len(got.images_by_alias) == 2
    assert got.manifest["skipped_images"] == want.manifest["skipped_images"]
    assert got.manifest["source"]["duplicates"] == 2


def test_a_killed_beam_run_resumes_to_the_same_shards(
    model: Path, folder: Path, tmp_path: Path
) -> None:
    _require_beam()
    out = tmp_path / "shards"
    argv = ["beam_embed", "--model_dir", str(model), "--images_dir", str(folder),
            "--out_dir", str(out), "--shard_size", str(SHARD_SIZE)]  # fmt: skip
    assert index_main.main(argv) == 0
    before = _shard_bodies(out)
    vectors = [np.array(s.vectors) for s in read_shards(out)]
    # As a kill would leave it: shard 1 half written (no .json), shard 3 never started.
    (out / "shard-00001.json").unlink()
    for p in out.glob("shard-00003*"):
        p.unlink()
    assert index_main.main(argv) == 2  # not without --resume
    assert index_main.main([*argv, "--resume"]) == 0
    assert _shard_bodies(out) == before
    for a, b in zip(vectors, (s.vectors for s in read_shards(out)), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_unknown_flags_are_refused(
    model: Path, folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _require_beam()
    argv = ["--model_dir", str(model), "--images_dir", str(folder),
            "--out_dir", str(tmp_path / "s"), "--shard_sise", "4"]  # fmt: skip
    assert index_main.main(["beam_embed", *argv]) == 2
    assert "--shard_sise" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
