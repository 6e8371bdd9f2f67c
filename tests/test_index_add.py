"""index.update.add_to_index: appending equals building at once; duplicates are no-ops."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from index import store
from index.builder import IndexPolicy, build_index_dir
from index.store import IndexDirError, ModelMismatchError, NewCaption, NewImage, load_index
from index.update import add_to_index
from tests.index_helpers import collection, faiss_threads, fake_image, leftovers, unit_vectors


@pytest.fixture(autouse=True)
def _one_faiss_thread() -> Iterator[None]:
    with faiss_threads(1):
        yield


def _split(tmp_path: Path, n: int, first: int) -> tuple[tuple, tuple, tuple]:
    """A collection of n images, its first `first` images, and the rest."""
    im, recs, caps, cap_recs = collection(n, files=tmp_path / "src")
    head = (im[:first], recs[:first], caps[: 5 * first], cap_recs[: 5 * first])
    tail = (im[first:], recs[first:], caps[5 * first :], cap_recs[5 * first :])
    return (im, recs, caps, cap_recs), head, tail


def test_flat_append_equals_build_at_once(tmp_path: Path) -> None:
    whole, head, tail = _split(tmp_path, 50, 30)
    build_index_dir(tmp_path / "once", *whole, model_hash="m", policy=IndexPolicy("flat"))
    build_index_dir(tmp_path / "inc", *head, model_hash="m", policy=IndexPolicy("flat"))
    manifest = add_to_index(tmp_path / "inc", *tail, expected_model_hash="m")
    assert manifest["images"]["count"] == 50 and manifest["captions"]["count"] == 250
    assert [u["added_images"] for u in manifest["updates"]] == [20]
    once, inc = load_index(tmp_path / "once"), load_index(tmp_path / "inc")
    q = unit_vectors(10, seed=42)
    for name in ("search_images", "search_captions"):
        a, b = getattr(once, name)(q, 15), getattr(inc, name)(q, 15)
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_allclose(a[0], b[0], rtol=1e-6)
    assert once.image_ids == inc.image_ids
    assert once.caption_ids == inc.caption_ids and once.captions == inc.captions
    assert inc.captions_of(45) == once.captions_of(45)
    for image_id in ("img0003.jpg", "img0045.jpg"):  # old (hard-linked) and new copies
        path = inc.image_file(image_id)
        assert path is not None and path.read_bytes() == fake_image(image_id)
    assert leftovers(tmp_path) == []


def test_duplicate_image_is_a_noop(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _, head, _ = _split(tmp_path, 10, 10)
    before = build_index_dir(tmp_path / "idx", *head, model_hash="m", policy=IndexPolicy("flat"))
    im, recs, caps, cap_recs = head
    with caplog.at_level(logging.INFO, logger="index.update"):
        after = add_to_index(tmp_path / "idx", im[:2], recs[:2], caps[:10], cap_recs[:10])
    assert after["build_id"] == before["build_id"]  # not rewritten at all
    assert "'img0000.jpg' is already indexed" in caplog.text
    assert load_index(tmp_path / "idx").manifest["build_id"] == before["build_id"]


def test_mixed_batch_adds_only_new_images(tmp_path: Path) -> None:
    whole, head, _ = _split(tmp_path, 12, 10)
    build_index_dir(tmp_path / "idx", *head, model_hash="m", policy=IndexPolicy("flat"))
    im, recs, caps, cap_recs = whole
    # Images 8..11: 8 and 9 are indexed already; 11 comes twice in the batch.
    rows = [8, 9, 10, 11, 11]
    cap_rows = [5 * r + j for r in rows[:4] for j in range(5)]
    add_to_index(
        tmp_path / "idx",
        im[rows],
        [recs[r] for r in rows],
        caps[cap_rows],
        [cap_recs[j] for j in cap_rows],
    )
    loaded = load_index(tmp_path / "idx")
    assert loaded.image_ids == [r.image_id for r in recs]
    assert len(loaded.captions) == 60
    assert loaded.captions_of(11) == [f"caption {j} of img0011.jpg" for j in range(5)]


@pytest.mark.parametrize(
    ("index_type", "params"),
    [
        ("hnsw", {"M": 8, "efSearch": 64}),
        ("ivf", {"nprobe": 8}),
        ("ivfpq", {"m": 4, "nbits": 2, "nprobe": 8, "k_factor": 0}),
    ],
)
def test_append_to_approximate_index(tmp_path: Path, index_type: str, params: dict) -> None:
    whole, head, tail = _split(tmp_path, 240, 180)
    build_index_dir(
        tmp_path / "idx",
        *head,
        model_hash="m",
        policy=IndexPolicy(index_type, params),
        recall_queries=100,
    )
    before = load_index(tmp_path / "idx").manifest
    manifest = add_to_index(tmp_path / "idx", *tail)
    loaded = load_index(tmp_path / "idx")
    assert len(loaded.image_ids) == 240 and len(loaded.captions) == 1200
    # Trained structures kept, search parameters as built, recall measured again.
    assert manifest["images"]["params"] == before["images"]["params"]
    assert 0 < manifest["images"]["recall_at_10"] <= 1
    _, rows = loaded.search_images(whole[0][180:200], 1)
    if index_type != "ivfpq":  # 8-bit PQ codes without re-ranking cannot tell them apart
        assert (rows[:, 0] == np.arange(180, 200)).mean() >= 0.8
    # Exact vectors stay available (a bare IVF-PQ keeps them in images.npy).
    np.testing.assert_allclose(loaded.vectors("images"), whole[0], atol=1e-6)
    if index_type == "ivfpq":
        assert manifest["images"]["vectors_file"] == "images.npy"


def test_refusals(tmp_path: Path) -> None:
    _, head, tail = _split(tmp_path, 12, 10)
    build_index_dir(tmp_path / "idx", *head, model_hash="model-a", policy=IndexPolicy("flat"))
    with pytest.raises(ModelMismatchError, match=r"model-a.*model-b"):
        add_to_index(tmp_path / "idx", *tail, expected_model_hash="model-b")
    im, recs, caps, cap_recs = tail
    with pytest.raises(ValueError, match=r"new image vectors have dim 8, index .* has dim 16"):
        add_to_index(tmp_path / "idx", im[:, :8], recs, caps[:, :8], cap_recs)
    with pytest.raises(ValueError, match=r"2 vectors for 1 records"):
        add_to_index(tmp_path / "idx", im, recs[:1], caps, cap_recs)
    with pytest.raises(ValueError, match=r"unknown image_id 'nope.jpg'"):
        add_to_index(tmp_path / "idx", im, recs, caps[:1], [NewCaption("nope.jpg", "x")])
    with pytest.raises(ValueError, match=r"not a plain relative path"):
        add_to_index(
            tmp_path / "idx", im[:1], [NewImage("../evil.jpg", tmp_path / "x")], caps[:0], []
        )
    with pytest.raises(IndexDirError, match=r"does not exist"):
        add_to_index(tmp_path / "nope", *tail)
    assert len(load_index(tmp_path / "idx").image_ids) == 10


def test_failed_append_leaves_old_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, head, tail = _split(tmp_path, 12, 10)
    before = build_index_dir(tmp_path / "idx", *head, model_hash="m", policy=IndexPolicy("flat"))

    def failing(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "_place_image", failing)
    with pytest.raises(OSError, match=r"No space"):
        add_to_index(tmp_path / "idx", *tail)
    loaded = load_index(tmp_path / "idx")
    assert loaded.manifest["build_id"] == before["build_id"] and len(loaded.image_ids) == 10
    assert leftovers(tmp_path) == []
