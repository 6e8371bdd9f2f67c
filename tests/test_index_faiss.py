"""index.faiss_index: exact search against numpy, recall of the approximate types, seeds."""

from __future__ import annotations

from collections.abc import Iterator

import faiss
import numpy as np
import pytest

from index import faiss_index
from index.faiss_index import (
    build_index,
    exact_vectors,
    measure_recall,
    neighbour_recall,
    resolve_type,
    sample_queries,
)
from tests.index_helpers import clustered_vectors, faiss_threads, unit_vectors


@pytest.fixture(autouse=True)
def _one_faiss_thread() -> Iterator[None]:
    with faiss_threads(1):
        yield


# Small enough for seconds; ivfpq uses 4-bit codes so that 16 centroids train on 2,000 points.
APPROX = {
    "hnsw": {"M": 16, "efConstruction": 40},
    "ivf": {},
    "ivfpq": {"m": 8, "nbits": 4, "k_factor": 16},
}


def test_flat_equals_numpy_topk() -> None:
    x = unit_vectors(500, 32, seed=1)
    q = unit_vectors(20, 32, seed=2)
    index, info = build_index(x, "flat")
    assert info["index_type"] == "flat" and info["exact"] and info["faiss_class"] == "IndexFlatIP"
    scores, rows = index.search(q, 10)
    sims = q @ x.T
    expected = np.argsort(-sims, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(rows, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(sims, expected, axis=1), rtol=1e-5)
    assert measure_recall(index, x, n_queries=50) == 1.0


def test_auto_picks_by_size(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_type("auto", faiss_index.AUTO_FLAT_MAX) == "flat"
    assert resolve_type("auto", faiss_index.AUTO_FLAT_MAX + 1) == "hnsw"
    monkeypatch.setattr(faiss_index, "AUTO_FLAT_MAX", 100)
    _, small = build_index(unit_vectors(100), "auto", efSearch=32)  # hnsw param: ignored
    _, large = build_index(unit_vectors(300), "auto", M=8, efSearch=32)
    assert (small["index_type"], small["requested_type"]) == ("flat", "auto")
    assert small["params"] == {"seed": 0}
    assert large["index_type"] == "hnsw"
    assert large["params"]["M"] == 8 and large["params"]["efSearch"] == 32


@pytest.mark.parametrize("index_type", sorted(APPROX))
def test_approximate_recall_meets_target(index_type: str) -> None:
    x = clustered_vectors(2000, 32, seed=3)
    index, info = build_index(x, index_type, seed=0, target_recall=0.95, **APPROX[index_type])
    tuned = info["params"]["efSearch" if index_type == "hnsw" else "nprobe"]
    assert tuned >= 1
    assert info["tuned_recall_at_10"] >= 0.95
    # Measured on other queries than the tuning ones; a sane bound, not the target.
    assert measure_recall(index, x, n_queries=200, seed=0) >= 0.9
    assert not info["exact"]


def test_tuning_stops_when_recall_plateaus(caplog: pytest.LogCaptureFixture) -> None:
    """Few PQ candidates re-ranked: more probes cannot help, so tuning stops early."""
    x = clustered_vectors(2000, 32, seed=3)
    _, info = build_index(x, "ivfpq", m=8, nbits=4, k_factor=1)
    assert info["params"]["nlist"] == 51
    assert info["params"]["nprobe"] < 51
    assert info["tuned_recall_at_10"] < 0.95
    assert "recall stopped improving" in caplog.text


def test_ivf_parameters_recorded() -> None:
    x = unit_vectors(2000, 16, seed=4)
    _, info = build_index(x, "ivf", nprobe=4)
    p = info["params"]
    # 4 sqrt(2000) = 179 lists would leave < 39 points each: capped at 2000 // 39.
    assert p["nlist"] == 51 and p["nprobe"] == 4 and p["seed"] == 0
    assert info["factory"] == "IVF51,Flat" and "tuned_recall_at_10" not in info


def test_ivf_is_deterministic_for_a_seed() -> None:
    x = unit_vectors(1500, 16, seed=5)
    q = unit_vectors(30, 16, seed=6)
    results = []
    for _ in range(2):
        index, _info = build_index(x, "ivfpq", seed=7, m=4, nbits=4, nprobe=3, k_factor=2)
        results.append(index.search(q, 5))
    np.testing.assert_array_equal(results[0][1], results[1][1])
    np.testing.assert_array_equal(results[0][0], results[1][0])
    other, _ = build_index(x, "ivfpq", seed=8, m=4, nbits=4, nprobe=3, k_factor=2)
    assert not np.array_equal(other.search(q, 5)[0], results[0][0])


def test_hnsw_is_deterministic_on_one_thread() -> None:
    x = unit_vectors(800, 16, seed=9)
    q = unit_vectors(30, 16, seed=10)
    a, _ = build_index(x, "hnsw", seed=1, M=8, efSearch=16)
    b, _ = build_index(x, "hnsw", seed=1, M=8, efSearch=16)
    np.testing.assert_array_equal(a.search(q, 10)[1], b.search(q, 10)[1])


def test_errors_name_the_problem() -> None:
    x = unit_vectors(100)
    with pytest.raises(ValueError, match=r"unknown parameter.*'nprobe'.*'flat'"):
        build_index(x, "flat", nprobe=3)
    with pytest.raises(ValueError, match=r"index_type='annoy'"):
        build_index(x, "annoy")
    with pytest.raises(ValueError, match=r"non-empty 2-D"):
        build_index(x[0], "flat")
    with pytest.raises(ValueError, match=r"non-empty 2-D"):
        build_index(x[:0], "flat")
    bad = x.copy()
    bad[7, 3] = np.nan
    with pytest.raises(ValueError, match=r"row 7"):
        build_index(bad, "flat")
    with pytest.raises(ValueError, match=r"needs at least 9984 vectors"):
        build_index(x, "ivfpq", m=4)
    with pytest.raises(ValueError, match=r"m=5 must divide the dimension 16"):
        build_index(unit_vectors(2000), "ivfpq", m=5, nbits=4)
    with pytest.raises(ValueError, match=r"expected a number"):
        build_index(x, "hnsw", M="32")


@pytest.mark.parametrize(
    ("index_type", "params"),
    [
        ("flat", {}),
        ("hnsw", {"M": 8, "efSearch": 16}),
        ("ivf", {"nprobe": 2}),
        ("ivfpq", {"m": 4, "nbits": 4, "nprobe": 2, "k_factor": 2}),
    ],
)
def test_exact_vectors_come_back(index_type: str, params: dict[str, int]) -> None:
    x = unit_vectors(1000, 16, seed=11)
    index, _ = build_index(x, index_type, **params)
    got = exact_vectors(index)
    assert got is not None
    np.testing.assert_array_equal(got, x)
    if index_type == "ivf":  # the direct map was built for the call only
        assert faiss.extract_index_ivf(index).direct_map.no()


def test_bare_ivfpq_keeps_no_exact_vectors() -> None:
    index, info = build_index(unit_vectors(1000), "ivfpq", m=4, nbits=4, nprobe=2, k_factor=0)
    assert info["faiss_class"] == "IndexIVFPQ"
    assert exact_vectors(index) is None


def test_recall_at_k_ignores_missing_hits() -> None:
    truth = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    found = np.array([[4, 3, -1, -1], [5, 6, 7, 9]])
    assert neighbour_recall(found, truth) == pytest.approx((2 + 3) / 8)


def test_sample_queries_are_seeded_and_noisy() -> None:
    x = unit_vectors(300)
    a = sample_queries(x, 50, seed=1, noise=0.5)
    np.testing.assert_array_equal(a, sample_queries(x, 50, seed=1, noise=0.5))
    assert not np.array_equal(a, sample_queries(x, 50, seed=2, noise=0.5))
    # Each query sits at cosine ~1/sqrt(1 + 0.5^2) = 0.89 of the row it came from.
    best = (a / np.linalg.norm(a, axis=1, keepdims=True) @ x.T).max(axis=1)
    assert np.all(best > 0.8) and np.all(best < 0.97)
    assert len(sample_queries(x, 1000)) == 300
