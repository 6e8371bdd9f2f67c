"""The programs index.build / add / query / evaluate, driven through main(argv).

The model is replaced by `FakeEncoders` (the real one is covered by the end-to-end tests);
the dataset reader and the evaluation protocol are the real ones.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from index import add, build, builder, evaluate, query, retrieval_metrics
from index.builder import BuildOptions, IndexPolicy, SplitSource
from index.store import ModelMismatchError, load_index
from index.update import add_with_model
from tests.index_helpers import DIM, FakeEncoders, faiss_threads, fake_image, leftovers
from vsepp.embed import EncoderOutputError, embed_images


@pytest.fixture(autouse=True)
def _one_faiss_thread() -> Iterator[None]:
    with faiss_threads(1):
        yield


def _flickr(root: Path, n: int, bad: dict[int, bytes] | None = None) -> dict[str, Path]:
    """A tiny Flickr8k seed layout: n images, 5 captions each, one test split."""
    images = root / "Flicker8k_Dataset"
    images.mkdir(parents=True)
    tokens, names = [], []
    for i in range(n):
        name = f"{1000 + i}_abc.jpg"
        (images / name).write_bytes((bad or {}).get(i, fake_image(name)))
        names.append(name)
        tokens += [f"{name}#{j}\tcaption {j} shows {name} here" for j in range(5)]
    (root / "Flickr8k.token.txt").write_text("\n".join(tokens) + "\n")
    (root / "Flickr_8k.testImages.txt").write_text("\n".join(names) + "\n")
    return {
        "images": images,
        "texts": root / "Flickr8k.token.txt",
        "split": root / "Flickr_8k.testImages.txt",
    }


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeEncoders:
    encoders = FakeEncoders()
    for module in (builder, add, query):
        monkeypatch.setattr(
            module, "load_encoders", lambda model_dir, precision="float32": encoders
        )
    return encoders


def _build_args(data: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "--model_dir", "unused", "--images_path", str(data["images"]),
        "--texts_path", str(data["texts"]), "--imgs_file_path", str(data["split"]),
        "--out", str(out), "--batch_size", "4", *extra,
    ]  # fmt: skip


def test_build_skips_bad_images_and_evaluates(tmp_path: Path, fake: FakeEncoders) -> None:
    bad = {3: fake_image("BAD"), 5: b"a text file named .jpg", 7: b""}
    data = _flickr(tmp_path / "data", 12, bad=bad)
    out = tmp_path / "indexes" / "test"
    assert build.main(_build_args(data, out)) == 0
    loaded = load_index(out, expected_model_hash="fake-model")
    assert len(loaded.image_ids) == 9 and len(loaded.captions) == 45
    # A split goes through the shards too: its images carry the capture fields (no EXIF
    # in these files: the mtime) and their folder.
    table = loaded.image_table
    assert set(table.column("taken_at_source").to_pylist()) == {"mtime"}
    assert table.column("taken_at").null_count == 0
    assert set(table.column("folder").to_pylist()) == {""}
    skipped = {s["image_id"]: s["reason"] for s in loaded.manifest["skipped_images"]}
    assert set(skipped) == {"1003_abc.jpg", "1005_abc.jpg", "1007_abc.jpg"}
    assert skipped["1007_abc.jpg"].startswith("empty")
    assert skipped["1005_abc.jpg"].startswith("not_an_image")
    assert skipped["1003_abc.jpg"].startswith("corrupt")  # the model's decoder refused it
    assert loaded.manifest["source"]["split"] and loaded.manifest["images"]["index_type"] == "flat"
    assert loaded.image_file("1000_abc.jpg") is not None
    assert loaded.image_file("1003_abc.jpg") is None
    # The batch with the corrupt image is retried one by one; files that are no image at all
    # are never sent to the model, nor take a place in a batch.
    assert fake.image_calls == [4, 1, 1, 1, 1, 4, 2]

    metrics = tmp_path / "metrics.json"
    assert evaluate.main(["--index", str(out), "--metrics_out", str(metrics)]) == 0
    result = json.loads(metrics.read_text())
    assert result["exact"]["n_images"] == 9 and not result["approximate"]
    # Flat index: its own top-10 gives exactly the protocol's recalls.
    for d in ("i2t", "t2i"):
        for key in ("r1", "r5", "r10"):
            assert result["from_index"][d][key] == pytest.approx(result["exact"][d][key])
            assert result["delta"][d][key] == 0
    assert result["exact"]["t2i"]["r1"] > 50  # the fake captions sit near their images


def test_build_with_hnsw_reports_delta(tmp_path: Path, fake: FakeEncoders) -> None:
    data = _flickr(tmp_path / "data", 30)
    out = tmp_path / "idx"
    args = _build_args(data, out, "--index_type", "hnsw", "--param", "M=4", "--param", "efSearch=4")
    assert build.main([*args, "--no-copy_images", "--recall_queries", "50"]) == 0
    loaded = load_index(out)
    assert loaded.manifest["images"]["params"]["efSearch"] == 4
    assert loaded.image_file("1000_abc.jpg") is None and not any((out / "images").iterdir())
    result = retrieval_metrics.evaluate_index(load_index(out, mmap=False))
    assert result["approximate"]
    assert result["exact_top10"]["t2i"]["r1"] == pytest.approx(result["exact"]["t2i"]["r1"])
    assert result["delta"]["rsum"] <= 0


def test_query_text_and_image(
    tmp_path: Path, fake: FakeEncoders, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _flickr(tmp_path / "data", 8)
    build.main(_build_args(data, tmp_path / "idx"))
    capsys.readouterr()
    base = ["--model_dir", "unused", "--index", str(tmp_path / "idx"), "--json", "-k", "3"]
    assert query.main([*base, "--text", "a photo of 1002_abc.jpg"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert [r["rank"] for r in results] == [1, 2, 3]
    assert results[0]["image_id"] == "1002_abc.jpg" and len(results[0]["captions"]) == 5
    assert query.main([*base, "--image", str(data["images"] / "1005_abc.jpg")]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert results[0]["image_id"] == "1005_abc.jpg" and "#" in results[0]["caption_id"]
    assert results[0]["score"] >= results[-1]["score"]


def test_query_refuses_another_model(
    tmp_path: Path, fake: FakeEncoders, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _flickr(tmp_path / "data", 6)
    build.main(_build_args(data, tmp_path / "idx"))
    argv = ["--model_dir", "x", "--index_dir", str(tmp_path / "idx"), "--text", "dog"]
    fake.model_hash = "other-model"
    assert query.main(argv) == 2
    assert re.search(r"error: .*fake-model.*other-model", capsys.readouterr().err)
    fake.model_hash, fake.embed_dim = "fake-model", DIM * 2
    assert query.main(argv) == 2
    assert re.search(r"has dim 16, the model's embed_dim is 32", capsys.readouterr().err)


def test_add_items_and_refusals(tmp_path: Path, fake: FakeEncoders) -> None:
    data = _flickr(tmp_path / "data", 6)
    build.main(_build_args(data, tmp_path / "idx"))
    new = tmp_path / "new"
    new.mkdir()
    (new / "cat.jpg").write_bytes(fake_image("cat.jpg"))
    items = [
        {"file": "cat.jpg", "captions": [f"cat.jpg caption {j}" for j in range(5)]},
        {"file": str(data["images"] / "1001_abc.jpg"), "captions": ["again"]},  # indexed
    ]
    (new / "items.json").write_text(json.dumps(items))
    argv = [
        "--model_dir",
        "x",
        "--index",
        str(tmp_path / "idx"),
        "--items",
        str(new / "items.json"),
    ]
    assert add.main(argv) == 0
    loaded = load_index(tmp_path / "idx")
    assert loaded.image_ids[-1] == "cat.jpg" and len(loaded.captions) == 35
    assert loaded.image_file("cat.jpg") is not None
    fake.model_hash = "other-model"
    with pytest.raises(ModelMismatchError, match=r"fake-model.*other-model"):
        add_with_model(fake, tmp_path / "idx", ["dog.jpg"], [new / "cat.jpg"], [["a dog"]])
    assert add.main(argv) == 2
    assert leftovers(tmp_path) == []


def test_add_a_split(tmp_path: Path, fake: FakeEncoders) -> None:
    first = _flickr(tmp_path / "a", 5)
    build.main(_build_args(first, tmp_path / "idx"))
    second = _flickr(tmp_path / "b", 8)  # the same five images and three more
    argv = [
        "--model_dir", "x", "--index", str(tmp_path / "idx"), "--images_path",
        str(second["images"]), "--texts_path", str(second["texts"]), "--imgs_file_path",
        str(second["split"]),
    ]  # fmt: skip
    assert add.main(argv) == 0
    loaded = load_index(tmp_path / "idx")
    assert len(loaded.image_ids) == 8 and len(loaded.captions) == 40
    result = retrieval_metrics.evaluate_index(loaded)
    assert result["exact"]["n_images"] == 8


@dataclass
class _Split:
    name: str
    image_ids: list[str]
    image_paths: list[Path]
    captions: list[str]
    captions_per_image: int = 5


def test_a_split_keeps_byte_copies_with_their_own_captions(
    tmp_path: Path, fake: FakeEncoders
) -> None:
    """A split goes through shards like a folder, but two images with the same bytes stay
    two images, each with its five captions: the protocol counts both."""
    data = _flickr(tmp_path / "data", 6, bad={4: fake_image("1000_abc.jpg")})
    out = tmp_path / "idx"
    assert build.main(_build_args(data, out)) == 0
    loaded = load_index(out)
    assert len(loaded.image_ids) == 6 and len(loaded.captions) == 30
    assert loaded.manifest["source"]["duplicates"] == 0
    assert loaded.captions_of(loaded.image_row("1004_abc.jpg"))[0] == (
        "caption 0 shows 1004_abc.jpg here"
    )
    assert retrieval_metrics.evaluate_index(loaded)["exact"]["n_images"] == 6
    assert not Path(f"{out}.shards").exists()  # embedded here, removed after the build


def test_a_split_resumes_after_a_kill_and_builds_under_a_budget(
    tmp_path: Path, fake: FakeEncoders
) -> None:
    data = _flickr(tmp_path / "data", 10)
    once = tmp_path / "once"
    assert build.main(_build_args(data, once, "--shard_size", "4")) == 0
    # A run killed after its first shard: the shards of a complete run, less the later ones.
    out, shards = tmp_path / "idx", tmp_path / "idx.shards"
    assert build.main(_build_args(data, out, "--shard_size", "4", "--keep_shards")) == 0
    for late in [*shards.glob("shard-00001*"), *shards.glob("shard-00002*")]:
        late.unlink()
    shutil.rmtree(out)
    calls = len(fake.image_calls)
    assert build.main(_build_args(data, out, "--shard_size", "4")) == 2  # not without --resume
    assert build.main(_build_args(data, out, "--shard_size", "4", "--resume")) == 0
    assert sum(fake.image_calls[calls:]) == 6  # only the images after the first shard
    again, first = load_index(out), load_index(once)
    assert again.image_ids == first.image_ids and again.caption_ids == first.caption_ids
    np.testing.assert_array_equal(again.vectors("images"), first.vectors("images"))
    assert not shards.exists()
    # --max_index_memory takes the same path: the budget's choice is in the manifest.
    budget = tmp_path / "budget"
    assert build.main(_build_args(data, budget, "--max_index_memory", "1G")) == 0
    manifest = load_index(budget).manifest
    assert manifest["images"]["index_type"] == "flat"
    assert manifest["images"]["max_index_memory"] == 2**30
    assert manifest["source"]["kind"] == "split" and len(load_index(budget).captions) == 50


def test_empty_split_and_nothing_embeddable(tmp_path: Path) -> None:
    def build_split(split: _Split) -> None:
        source = SplitSource(split)  # type: ignore[arg-type]
        builder.build(source, tmp_path / "idx", IndexPolicy(), BuildOptions(), FakeEncoders())

    with pytest.raises(ValueError, match=r"split 'test' has no images"):
        build_split(_Split("test", [], [], []))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"BAD")
    with pytest.raises(ValueError, match=r"no image could be embedded \(first: bad.jpg: "):
        build_split(_Split("test", ["bad.jpg"], [bad], ["x"] * 5))
    assert not (tmp_path / "idx").exists()


def test_model_output_of_the_wrong_size_is_an_error(tmp_path: Path) -> None:
    img = tmp_path / "a.jpg"
    img.write_bytes(fake_image("a.jpg"))
    with pytest.raises(EncoderOutputError, match=r"shape \(1, 8\).*expected \(1, 16\)"):
        embed_images(FakeEncoders(out_dim=8), ["a.jpg"], [img])


def test_argument_errors(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--model_dir", "m", "--images_path", "i", "--texts_path", "t", "--out", "o"]
    with pytest.raises(SystemExit):
        build.parse_args([*base, "--split", "test", "--index_type", "annoy"])
    with pytest.raises(SystemExit):
        build.parse_args([*base, "--split", "test", "--param", "nope=3"])
    with pytest.raises(SystemExit):
        build.parse_args([*base, "--split", "test", "--imgs_file_path", "x"])
    args = build.parse_args([*base, "--test_imgs_file_path", "x", "--param", "efSearch=64"])
    assert args.param == [("efSearch", 64)] and args.copy_images
    with pytest.raises(SystemExit):
        add.parse_args(["--model_dir", "m", "--index", "i"])
    with pytest.raises(SystemExit):
        query.parse_args(["--model_dir", "m", "--index", "i", "--text", "  "])
    assert "--text is empty" in capsys.readouterr().err


FOLDER = ["--model_dir", "m", "--images_dir", "d", "--out", "o"]
APPEND = ["--model_dir", "m", "--index", "i"]


@pytest.mark.parametrize(
    ("parse", "argv", "flag"),
    [
        (build.parse_args, [*FOLDER, "--batch_size", "0"], "--batch_size"),
        (build.parse_args, [*FOLDER, "--shard_size", "-3"], "--shard_size"),
        (build.parse_args, [*FOLDER, "--recall_queries", "0"], "--recall_queries"),
        (add.parse_args, [*APPEND, "--images_dir", "d", "--batch_size", "0"], "--batch_size"),
        (query.parse_args, [*APPEND, "-k", "0", "a dog"], "-k"),
    ],
)
def test_counts_below_one_are_refused_naming_the_flag(
    parse: Any, argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        parse(argv)
    assert done.value.code == 2
    assert re.search(rf"argument {flag}\b.*: -?\d+: must be at least 1", capsys.readouterr().err)


def test_vectors_match_between_programs(tmp_path: Path, fake: FakeEncoders) -> None:
    """The index holds exactly what the model gave for the files and captions."""
    data = _flickr(tmp_path / "data", 4)
    build.main(_build_args(data, tmp_path / "idx"))
    loaded = load_index(tmp_path / "idx")
    want = fake.encode_image_bytes([(data["images"] / "1002_abc.jpg").read_bytes()])
    np.testing.assert_allclose(loaded.vectors("images")[2], want[0], atol=1e-6)
