"""Indexes larger than memory: the budget's choices, the streamed on-disk build from shards,
and serving it through the real service (uvicorn on 127.0.0.1), reload included."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from index import build, query
from index.budget import (
    BudgetTooSmallError,
    candidates,
    choose_index,
    choose_pair,
    format_size,
    parse_size,
)
from index.builder import IndexPolicy, build_index_dir
from index.faiss_index import exact_search, neighbour_recall
from index.shards import FORMAT as SHARDS_FORMAT
from index.shards import _save_npy, write_corpus
from index.store import load_index
from index.streaming import ArraySource, RunningTopK, budgeted_parts
from service.config import Settings
from service.main import create_app
from tests.index_helpers import (
    FakeEncoders,
    clustered_vectors,
    collection,
    faiss_threads,
    fake_image,
    model_manifest_dir,
)
from tests.service_helpers import uvicorn_in_thread

DIM = 32
SHARD = 700
N_IMAGES = 4_000


@pytest.fixture(autouse=True)
def _one_faiss_thread() -> Iterator[None]:
    with faiss_threads(1):
        yield


# --------------------------------------------------------------------------- the budget


def test_sizes_parse_like_autofaiss() -> None:
    assert parse_size("4G") == 4 * 2**30
    assert parse_size("500M") == 500 * 2**20
    assert parse_size("1.5GB") == int(1.5 * 2**30)
    assert parse_size("2gib") == 2 * 2**30
    assert parse_size("1024") == 1024
    assert parse_size("64K") == 65536
    for bad in ("", "4X", "G", "-1G", "0", "4 G B"):
        with pytest.raises(ValueError, match=r"expected a size|at least 1 byte"):
            parse_size(bad)


@pytest.mark.parametrize(
    ("n", "budget", "expected"),
    [
        (30_000, "1G", "Flat"),  # small enough to scan: exact
        (100_000, "4G", "HNSW32"),  # beyond AUTO_FLAT_MAX, as `auto` does
        (1_000_000, "4.5G", "HNSW32"),  # 3.8 GiB of vectors + 0.25 GiB of links fit
        (1_000_000, "4.2G", "IVF2048_HNSW32,SQ8"),  # ... not with the build's chunk and queries
        (10_000_000, "16G", "IVF4096_HNSW32,SQ8"),
        (10_000_000, "4G", "IVF4096_HNSW32,PQ256x8"),
        (10_000_000, "2.4G", "IVF4096_HNSW32,PQ128x8"),  # its build (2.3 GiB) bounds it
        (10_000_000, "2G", "IVF4096_HNSW32,PQ64x8"),
        (100_000_000, "4G", "IVF4096_HNSW32,PQ32x8"),
    ],
)
def test_the_budget_picks_the_best_index_that_fits(n: int, budget: str, expected: str) -> None:
    d, chunk = 1024, 10_000
    allowed = parse_size(budget)
    choice = choose_index(n, d, allowed, chunk_rows=chunk)
    assert choice.factory == expected
    assert choice.needs <= allowed
    # Every better candidate (earlier in the list) needs more than the budget.
    options = candidates(n, d, chunk_rows=chunk)
    better = options[: [c.factory for c in options].index(choice.factory)]
    assert all(c.needs > allowed for c in better)


def test_estimates_grow_with_quality_and_size() -> None:
    tiny = candidates(10_000, 1024, chunk_rows=10_000)
    assert tiny[0].factory == "Flat" and tiny[0].serving_bytes == 10_000 * 1024 * 4
    small = candidates(1_000_000, 1024, chunk_rows=10_000)
    serving = [c.serving_bytes for c in small]
    assert small[0].factory == "HNSW32"
    assert 1_000_000 * 4096 < serving[0] < 1_000_000 * 4096 * 1.1  # vectors + links
    assert serving[1:] == sorted(serving[1:], reverse=True)  # smaller codes, less memory
    # SQ8: one byte per dimension plus an 8-byte id per vector, and the quantizer.
    assert small[1].params["code"] == "SQ8"
    assert 1_000_000 * 1032 < serving[1] < 1_000_000 * 1032 * 1.05
    big = candidates(10_000_000, 1024, chunk_rows=10_000)
    assert all(b.serving_bytes > s.serving_bytes for b, s in zip(big, small, strict=True))


def test_a_budget_too_small_names_the_smallest_that_works() -> None:
    n, d = 1_000_000, 1024
    smallest = min(c.needs for c in candidates(n, d, chunk_rows=10_000))
    with pytest.raises(BudgetTooSmallError) as info:
        choose_index(n, d, parse_size("10M"), chunk_rows=10_000)
    message = str(info.value)
    assert "10.0M is too small for 1,000,000 vectors" in message
    assert f"{smallest:,} bytes" in message and format_size(smallest) in message
    # ... and that budget does work.
    assert choose_index(n, d, smallest, chunk_rows=10_000).needs == smallest
    with pytest.raises(BudgetTooSmallError, match="image and"):
        choose_pair(n, 5 * n, d, parse_size("10M"), chunk_rows=10_000)


def test_both_sides_share_the_budget() -> None:
    d, budget = 1024, parse_size("1G")
    assert choose_index(40_000, d, budget, chunk_rows=10_000).factory == "Flat"
    assert choose_index(200_000, d, budget, chunk_rows=10_000).factory == "IVF1024_HNSW32,SQ8"
    images, captions = choose_pair(40_000, 200_000, d, budget, chunk_rows=10_000)
    assert (images.factory, captions.factory) == ("Flat", "IVF1024_HNSW32,SQ8")
    # Their serving memory adds up: 200k more images do not fit beside those captions.
    images, captions = choose_pair(200_000, 200_000, d, budget, chunk_rows=10_000)
    assert images.serving_bytes + captions.serving_bytes <= budget
    assert images.factory == "IVF1024_HNSW32,SQ8" and captions.factory == "IVF1024_HNSW32,SQ8"


# --------------------------------------------------------------------------- streamed maths


def test_running_top_k_equals_one_exact_search() -> None:
    x = clustered_vectors(3_000, DIM, seed=3)
    q = clustered_vectors(40, DIM, seed=4)
    running = RunningTopK(q)
    for start in range(0, len(x), 512):
        running.add(x[start : start + 512], start)
    scores, rows = exact_search(q, x, 10)
    np.testing.assert_array_equal(running.rows, rows)
    np.testing.assert_allclose(running.scores, scores, rtol=1e-5)


# --------------------------------------------------------------------------- from shards


def write_shards(root: Path, images: np.ndarray, captions_per_image: int = 1) -> Path:
    """A shards directory in the layout of index.shards, with synthetic vectors."""
    root.mkdir(parents=True)
    meta = {"format": SHARDS_FORMAT, "model_hash": "fake-model", "dim": images.shape[1],
            "shard_size": SHARD, "source": {"kind": "synthetic"}}  # fmt: skip
    (root / "shards.json").write_text(json.dumps(meta))
    rng = np.random.default_rng(7)
    for number, start in enumerate(range(0, len(images), SHARD)):
        vectors = images[start : start + SHARD]
        records = [
            {"image_id": f"img-{start + i:05d}", "file": f"/nowhere/{start + i}.jpg",
             "sha256": f"{start + i:064x}", "width": 8, "height": 8, "meta": {},
             "captions": [f"caption {j} of img-{start + i:05d}" for j in range(captions_per_image)]}
            for i in range(len(vectors))
        ]  # fmt: skip
        caps = np.repeat(vectors, captions_per_image, axis=0)
        caps = caps + 0.3 * rng.standard_normal(caps.shape).astype(np.float32) / np.sqrt(DIM)
        caps /= np.linalg.norm(caps, axis=1, keepdims=True)
        _save_npy(root / f"shard-{number:05d}.npy", vectors)
        _save_npy(root / f"shard-{number:05d}.captions.npy", caps)
        body = {"images": records, "seen": [r["image_id"] for r in records], "skipped": [],
                "duplicates": []}  # fmt: skip
        (root / f"shard-{number:05d}.json").write_text(json.dumps(body))
    write_corpus(root, ["a corpus caption", "another"], images[:2].copy())
    return root


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return clustered_vectors(N_IMAGES, DIM, clusters=40, seed=11)


@pytest.fixture(scope="module")
def shards(vectors: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shards(tmp_path_factory.mktemp("ondisk") / "shards", vectors)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The model the synthetic shards say they were embedded with (its manifest only)."""
    return str(model_manifest_dir(tmp_path_factory.mktemp("model"), "fake-model", DIM))


def _budget_below_vectors(n_images: int, n_captions: int, recall_queries: int) -> int:
    """The budget an SQ8 on-disk index of both sides needs: less than their float32 vectors
    and than any flat or HNSW choice."""

    def sq8(n: int) -> Any:
        options = candidates(n, DIM, chunk_rows=SHARD, recall_queries=recall_queries)
        return next(c for c in options if c.params.get("code") == "SQ8")

    a, b = sq8(n_images), sq8(n_captions)
    return max(a.serving_bytes + b.serving_bytes, a.build_bytes, b.build_bytes)


def _small_process(monkeypatch: pytest.MonkeyPatch) -> None:
    # The fixed per-process allowance (200 MiB) would dwarf a test's few MB of vectors.
    import index.budget

    monkeypatch.setattr(index.budget, "BASE_BYTES", 0)


@pytest.fixture(scope="module")
def ondisk_index(
    shards: Path, model: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, int]:
    mp = pytest.MonkeyPatch()
    _small_process(mp)  # type: ignore[arg-type]
    try:
        n_caps = N_IMAGES + 2
        budget = _budget_below_vectors(N_IMAGES, n_caps, 200)
        pair = choose_pair(N_IMAGES, n_caps, DIM, budget, chunk_rows=SHARD, recall_queries=200)
        assert [c.params.get("code") for c in pair] == ["SQ8", "SQ8"]
        out = tmp_path_factory.mktemp("ondisk-index") / "idx"
        argv = ["--model_dir", model, "--from_shards", str(shards), "--index_dir", str(out),
                "--no-copy_images", "--max_index_memory", str(budget),
                "--recall_queries", "200"]  # fmt: skip
        with faiss_threads(1):
            assert build.main(argv) == 0
    finally:
        mp.undo()
    return out, budget


def test_from_shards_under_a_budget_builds_an_on_disk_index(
    ondisk_index: tuple[Path, int], vectors: np.ndarray
) -> None:
    out, budget = ondisk_index
    vector_bytes = (2 * N_IMAGES + 2) * DIM * 4
    assert budget < vector_bytes  # the point: the vectors would not fit
    manifest = json.loads((out / "manifest.json").read_text())
    for side in ("images", "captions"):
        facts = manifest[side]
        assert facts["index_type"] == "ivf_hnsw_ondisk", facts
        assert facts["max_index_memory"] == budget
        assert facts["estimated_serving_bytes"] <= budget
        assert {"nlist", "code", "m", "nbits", "nprobe", "quantizer_efSearch"} <= set(
            facts["params"]
        )
        assert facts["recall_queries"] == 200 and facts["recall_at_10"] >= 0.9
        assert facts["index_bytes"] == sum(
            manifest["files"][n]["bytes"] for n in (f"{side}.faiss", f"{side}.ivfdata")
        )
    assert (
        manifest["images"]["estimated_serving_bytes"]
        + manifest["captions"]["estimated_serving_bytes"]
        <= budget
    )
    assert not list(out.parent.glob(".idx*")), "the scratch directory was left behind"
    loaded = load_index(out)
    assert loaded.load_modes == {
        "images": "mmap (on-disk lists)",
        "captions": "mmap (on-disk lists)",
    }
    assert loaded.image_ids[:2] == ["img-00000", "img-00001"]
    assert loaded.captions[-2:] == ["a corpus caption", "another"]
    assert loaded.caption_image_rows[-1] == -1 and loaded.caption_image_rows[5] == 5
    # Its answers against exact search over the shards' vectors, on queries near the data.
    q = vectors[::97] + 0.05 * np.random.default_rng(1).standard_normal((42, DIM)).astype(
        np.float32
    )
    _, found = loaded.search_images(q, 10)
    _, truth = exact_search(q / np.linalg.norm(q, axis=1, keepdims=True), vectors, 10)
    assert neighbour_recall(found, truth) >= 0.9
    # The ivfdata path recorded at build time (a scratch dir, now gone) is not what is read.
    assert str(out) not in (out / "images.faiss").read_bytes().decode("latin-1")


def test_query_program_searches_an_on_disk_index(
    ondisk_index: tuple[Path, int],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out, _ = ondisk_index
    # The model is not what this is about: the fake maps a text to a fixed vector.
    monkeypatch.setattr(query, "load_encoders", lambda _: _fake_encoders())
    assert query.main(["--model_dir", "unused", "--index_dir", str(out), "--json", "-k", "4",
                       "caption 1 of img-00010"]) == 0  # fmt: skip
    body = json.loads(capsys.readouterr().out)
    hits = body["results"] if isinstance(body, dict) else body
    assert len(hits) == 4
    loaded = load_index(out)
    text_vector = _fake_encoders().encode_texts(["caption 1 of img-00010"])[0]
    _, rows = loaded.search_images(text_vector, 4)
    assert [h["image_id"] for h in hits] == [loaded.image_ids[r] for r in rows[0]]


def test_a_budget_too_small_for_the_shards_is_refused(
    shards: Path, model: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "idx"
    argv = [
        "--model_dir",
        model,
        "--from_shards",
        str(shards),
        "--index_dir",
        str(out),
        "--max_index_memory",
        "100K",
    ]
    assert build.main(argv) == 2
    err = capsys.readouterr().err
    assert "--max_index_memory 100.0K is too small for 4,000 image and 4,002 caption vectors" in err
    assert "give at least that" in err
    assert not out.exists() and not list(tmp_path.glob(".idx*"))


def test_the_budget_replaces_index_type(shards: Path, model: str, tmp_path: Path) -> None:
    argv = ["--model_dir", model, "--from_shards", str(shards), "--index_dir", str(tmp_path / "i"),
            "--max_index_memory", "1G", "--index_type", "hnsw"]  # fmt: skip
    with pytest.raises(SystemExit) as info:
        build.parse_args(argv)
    assert info.value.code == 2


def test_a_generous_budget_streams_an_exact_index(shards: Path, model: str, tmp_path: Path) -> None:
    out = tmp_path / "idx"
    argv = ["--model_dir", model, "--from_shards", str(shards), "--index_dir", str(out),
            "--no-copy_images", "--max_index_memory", "4G", "--recall_queries", "50"]  # fmt: skip
    assert build.main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["images"]["index_type"] == "flat"
    assert manifest["images"]["recall_at_10"] == 1.0
    loaded = load_index(out)
    assert loaded.search_images(loaded.vectors("images")[7], 1)[1][0, 0] == 7


# --------------------------------------------------------------------------- serving it


def _fake_encoders() -> Any:
    return FakeEncoders(dim=DIM, model_hash="fake-model")


def test_the_service_serves_and_reloads_an_on_disk_index(
    ondisk_index: tuple[Path, int],
    shards: Path,
    model: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, budget = ondisk_index
    # A copy the test may rebuild in place (the module's index stays as it is).
    live = tmp_path / "live"
    _, records, caps, caption_records = collection(300, DIM, seed=5)
    # Image vectors as the fake encoder sees these ids: a text naming an id finds it.
    images = _fake_encoders().encode_image_bytes([fake_image(r.image_id) for r in records])
    _small_process(monkeypatch)
    first = build_index_dir(live, images, records, caps, caption_records,
                            model_hash="fake-model", policy=IndexPolicy(max_index_memory=budget),
                            recall_queries=50)  # fmt: skip
    settings = Settings(index_dir=live, admin_token="t0ken", reload_interval_s=0)
    app = create_app(settings, _fake_encoders(), None)
    with uvicorn_in_thread(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        deadline = time.monotonic() + 30
        while client.get("/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        health = client.get("/health").json()
        assert health["index"]["image_index_type"] == first["images"]["index_type"]
        hit = client.post("/search/text", json={"query": records[3].image_id, "k": 5}).json()
        assert hit["results"][0]["image_id"] == records[3].image_id
        # Rebuild the directory under the running service from the shards (on disk), then
        # reload: the old mapping stays valid until the swap, the new one is served.
        argv = ["--model_dir", model, "--from_shards", str(shards), "--index_dir", str(live),
                "--no-copy_images", "--max_index_memory", str(budget),
                "--recall_queries", "50"]  # fmt: skip
        assert build.main(argv) == 0
        answer = client.post("/admin/reload", headers={"Authorization": "Bearer t0ken"})
        assert answer.status_code == 200, answer.text
        health = client.get("/health").json()
        assert health["index"]["images"] == N_IMAGES
        assert health["index"]["image_index_type"] == "ivf_hnsw_ondisk"
        query = {"query": "caption 0 of img-00042", "k": 3}
        hit = client.post("/search/text", json=query)
        assert hit.status_code == 200 and len(hit.json()["results"]) == 3
        # On-disk to on-disk: the served index maps the .ivfdata of a directory that the
        # next build swaps out and deletes; the mapping keeps it readable until released.
        served = app.state.vsepp.backend.index
        probe_vector = np.ones(DIM, np.float32)
        probe = served.search_images(probe_vector, 5)
        assert build.main([*argv, "--seed", "1"]) == 0
        answer = client.post("/admin/reload", headers={"Authorization": "Bearer t0ken"})
        assert answer.status_code == 200, answer.text
        assert client.get("/health").json()["index"]["build_id"] != served.manifest["build_id"]
        again = served.search_images(probe_vector, 5)  # the old one, after its files went
        np.testing.assert_array_equal(again[1], probe[1])
        np.testing.assert_allclose(again[0], probe[0])
        hit = client.post("/search/text", json=query)
        assert hit.status_code == 200 and len(hit.json()["results"]) == 3


def test_budgeted_parts_of_arrays(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _small_process(monkeypatch)
    x = clustered_vectors(3_000, DIM, clusters=30, seed=2)
    sources = {"images": ArraySource(x, 500), "captions": ArraySource(x[:0])}
    flat, _, sq8 = candidates(3_000, DIM, chunk_rows=500, recall_queries=100)[:3]
    assert sq8.needs < flat.needs
    parts = budgeted_parts(sources, sq8.needs, tmp_path, chunk_rows=500, recall_queries=100)
    assert parts["images"].facts["index_type"] == "ivf_hnsw_ondisk"
    assert parts["images"].ivfdata == tmp_path / "images.ivfdata"
    assert parts["captions"].facts["count"] == 0


def test_an_on_disk_index_is_mapped_read_only_and_not_appended_to(
    ondisk_index: tuple[Path, int],
) -> None:
    import faiss

    from index.store import IndexDirError

    out, _ = ondisk_index
    loaded = load_index(out, mmap=False)  # on-disk lists are mapped whatever mmap says
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(loaded.image_index).invlists)
    assert type(lists).__name__ == "OnDiskInvertedLists" and lists.read_only
    assert lists.filename == str(out / "images.ivfdata")
    with pytest.raises(IndexDirError, match="rebuild it from the shards"):
        loaded.vectors("images")
