"""A shards directory that cannot make a whole index is refused by `index.build
--from_shards`, naming the shard file (or both model hashes); no model, no TensorFlow."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from index import build
from index.shards import ShardsError, embed_to_shards, read_shards
from index.sources import SourceImage
from tests.index_helpers import FakeEncoders, fake_image, model_manifest_dir

MODEL_HASH = "fake-model"


def _shards(tmp_path: Path, n: int = 10, size: int = 3) -> Path:
    files = tmp_path / "files"
    files.mkdir()
    items = []
    for i in range(n):
        path = files / f"img{i:04d}.jpg"
        path.write_bytes(fake_image(path.name))
        items.append(SourceImage(path.name, path, (f"a caption of {path.name}",)))
    out = tmp_path / "shards"
    embed_to_shards(items, FakeEncoders(), out, source={"kind": "test"}, shard_size=size)
    return out


# The in-memory build, and the one under a memory budget that streams the shards.
BUDGETS = [
    pytest.param([], id="in-memory"),
    pytest.param(["--max_index_memory", "1G"], id="budget"),
]


def _build(
    tmp_path: Path,
    shards: Path,
    capsys: pytest.CaptureFixture[str],
    model: str,
    budget: list[str] | None = None,
) -> str:
    model_dir = model_manifest_dir(tmp_path, model, 16)
    argv = ["--model_dir", str(model_dir), "--from_shards", str(shards),
            "--index_dir", str(tmp_path / "index"), "--no-copy_images",
            *(budget or [])]  # fmt: skip
    code = build.main(argv)
    err = capsys.readouterr().err
    if code == 0:
        return ""
    assert code == 2, err
    assert not (tmp_path / "index").exists()
    return err


def test_whole_shards_build(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shards = _shards(tmp_path)
    assert json.loads((shards / "shards.json").read_text())["shards"] == 4
    assert _build(tmp_path, shards, capsys, MODEL_HASH) == ""
    assert (tmp_path / "index" / "manifest.json").is_file()


def test_a_missing_shard_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shards = _shards(tmp_path)
    for p in shards.glob("shard-00001*"):
        p.unlink()
    err = _build(tmp_path, shards, capsys, MODEL_HASH)
    assert "shard-00001.json" in err and "missing" in err


def test_a_missing_last_shard_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shards = _shards(tmp_path)
    for p in shards.glob("shard-00003*"):
        p.unlink()
    err = _build(tmp_path, shards, capsys, MODEL_HASH)
    assert "shard-00003.json" in err and "shard 3 of 4 is missing" in err


@pytest.mark.parametrize("budget", BUDGETS)
def test_a_half_written_shard_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], budget: list[str]
) -> None:
    shards = _shards(tmp_path)
    (shards / "shard-00002.json").unlink()  # the .json is written last
    err = _build(tmp_path, shards, capsys, MODEL_HASH, budget)
    assert "shard-00002.captions.npy" in err and "half-written" in err


@pytest.mark.parametrize("suffix", [".npy", ".captions.npy"])
def test_rows_that_do_not_match_the_json_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    shards = _shards(tmp_path)
    path = shards / f"shard-00001{suffix}"
    np.save(path, np.load(path)[:-1])
    err = _build(tmp_path, shards, capsys, MODEL_HASH)
    assert f"shard-00001{suffix}" in err and "(2, 16)" in err and "expected (3, 16)" in err


def test_a_shard_of_another_size_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shards = _shards(tmp_path)
    body = json.loads((shards / "shard-00000.json").read_text())
    body["seen"] = body["seen"][:2]
    (shards / "shard-00000.json").write_text(json.dumps(body))
    err = _build(tmp_path, shards, capsys, MODEL_HASH)
    assert "shard-00000.json" in err and "2 source images" in err


def test_a_truncated_json_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shards = _shards(tmp_path)
    path = shards / "shard-00001.json"
    path.write_text(path.read_text()[:40])
    err = _build(tmp_path, shards, capsys, MODEL_HASH)
    assert "shard-00001.json" in err and "not a readable shard file" in err


@pytest.mark.parametrize("budget", BUDGETS)
def test_shards_of_another_model_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], budget: list[str]
) -> None:
    shards = _shards(tmp_path)
    err = _build(tmp_path, shards, capsys, "another-model", budget)
    assert "'fake-model'" in err and "'another-model'" in err


def test_resuming_in_process_refuses_out_of_order_shards(tmp_path: Path) -> None:
    shards = _shards(tmp_path)
    for p in shards.glob("shard-00001*"):
        p.unlink()  # as a killed Beam run may leave them
    items = [
        SourceImage(f"img{i:04d}.jpg", tmp_path / "files" / f"img{i:04d}.jpg") for i in range(10)
    ]
    with pytest.raises(ShardsError, match="shard 1 is missing"):
        embed_to_shards(items, FakeEncoders(), shards, source={"kind": "test"}, shard_size=3,
                        resume=True)  # fmt: skip
    # A resumable gap is passed over only when asked (a run going on).
    assert [s.number for s in read_shards(shards, gaps=True)] == [0, 2, 3]
