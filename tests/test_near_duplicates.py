"""Near-duplicate groups: found at build and add time with the index's own range search,
kept through removals, and collapsed in a search over a real uvicorn."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import faiss
import httpx
import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from index import add, build, builder, remove
from index.duplicates import kept_pairs, label_groups, near_pairs
from index.store import load_index
from service.config import Settings
from service.main import create_app
from service.schemas import ImageToImageResponse, TextSearchResponse
from tests.index_helpers import DIM, FakeEncoders, fake_image, unit_vectors
from tests.service_helpers import body_of, uvicorn_in_thread, wait_healthy


def burst_shot(name: str, shade: int) -> bytes:
    """Another file of the same scene: other pixels (other bytes), the same vector for
    FakeEncoders, which reads the scene's name."""
    info = PngInfo()
    info.add_text("name", name)
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (shade, 120, 150)).save(buffer, "PNG", pnginfo=info)
    return buffer.getvalue()


# --------------------------------------------------------------------------- grouping


def test_pairs_join_into_groups_labelled_by_their_first_row() -> None:
    pairs = [(np.array([5, 2, 7]), np.array([2, 9, 8]))]
    labels = label_groups(10, pairs)
    assert labels.tolist() == [-1, -1, 2, -1, -1, 2, -1, 7, 7, 2]
    # Rows 2 and 8 removed: the rest renumbered, the group of 7 and 8 left alone with 7.
    kept = np.array([0, 1, 3, 4, 5, 6, 7, 9])
    again = label_groups(len(kept), kept_pairs(labels, kept))
    assert again.tolist() == [-1, -1, -1, -1, 4, -1, -1, 4]


def test_the_index_finds_its_near_pairs_chunk_by_chunk() -> None:
    x = unit_vectors(300, seed=1)
    x[200] = x[10]
    near = x[10] + 0.01 * unit_vectors(1, seed=2)[0]
    x[250] = near / np.linalg.norm(near)
    index = faiss.IndexFlatIP(DIM)
    index.add(x)
    pairs = list(near_pairs(index, [x[:128], x[128:]], threshold=0.99))
    labels = label_groups(300, pairs)
    assert np.flatnonzero(labels >= 0).tolist() == [10, 200, 250]
    assert set(labels[[10, 200, 250]].tolist()) == {10}


# --------------------------------------------------------------------------- build, add, serve


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, FakeEncoders]]:
    """30 photos; a burst of four shots of `beach`, a pair of `dog`, and a byte copy."""
    root = tmp_path_factory.mktemp("bursts")
    folder = root / "photos"
    folder.mkdir()
    for i in range(24):
        (folder / f"p{i:02d}.png").write_bytes(fake_image(f"p{i:02d}.png"))
    for shade in range(4):
        (folder / f"beach-{shade}.png").write_bytes(burst_shot("beach.jpg", 40 * shade))
    (folder / "dog-a.png").write_bytes(burst_shot("dog.jpg", 1))
    (folder / "dog-b.png").write_bytes(burst_shot("dog.jpg", 2))
    (folder / "copy.png").write_bytes(fake_image("p03.png"))  # the same bytes as p03.png
    encoders = FakeEncoders(dim=DIM)
    monkey = pytest.MonkeyPatch()
    for module in (builder, add):
        monkey.setattr(module, "load_encoders", lambda *_: encoders)
    try:
        out = root / "index"
        argv = ["--model_dir", "m", "--images_dir", str(folder), "--index_dir", str(out)]
        assert build.main(argv) == 0
        yield out, encoders
    finally:
        monkey.undo()


def test_a_build_groups_bursts_and_keeps_byte_copies_as_aliases(
    photos: tuple[Path, FakeEncoders],
) -> None:
    out, _ = photos
    loaded = load_index(out)
    assert loaded.manifest["near_duplicates"] == {
        "threshold": 0.97,
        "groups": 2,
        "images_in_groups": 6,
    }
    beach = loaded.image_row("beach-2.png")
    assert [loaded.image_ids[r] for r in loaded.group_of(beach)] == [
        f"beach-{i}.png" for i in range(4)
    ]
    # A byte copy is an alias of the first of its files (in walk order), not a group.
    assert loaded.images_by_alias == {"p03.png": "copy.png"}
    assert loaded.group_of(loaded.image_row("copy.png")) == [loaded.image_row("copy.png")]


def test_a_collapsed_search_shows_a_group_once(photos: tuple[Path, FakeEncoders]) -> None:
    out, encoders = photos
    app = create_app(Settings(index_dir=out), encoders, None)
    with uvicorn_in_thread(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        wait_healthy(client, timeout_s=30)
        query = {"query": "a photo of beach.jpg", "k": 6}
        plain = client.post("/search/text", json=query).json()["results"]
        beach = {f"beach-{i}.png" for i in range(4)}
        assert {r["image_id"] for r in plain[:4]} == beach  # equal scores: in any order
        assert all(r["duplicates"] is None for r in plain)
        answer = client.post("/search/text", json={**query, "collapse": True})
        folded = body_of(TextSearchResponse, answer)["results"]
        ids = [r["image_id"] for r in folded]
        assert ids[0] in beach and not any(i.startswith("beach-") for i in ids[1:])
        assert len(ids) == 6  # the page is still full: the pool had more to show
        assert folded[0]["duplicates"] == {
            "count": 3,
            "image_ids": sorted(beach - {ids[0]}),
        }
        assert folded[1]["duplicates"] == {"count": 0, "image_ids": []}
        group = client.get("/images/dog-b.png/duplicates").json()
        assert group == {"image_id": "dog-b.png", "group": ["dog-a.png", "dog-b.png"],
                         "threshold": 0.97}  # fmt: skip
        assert client.get("/images/p01.png/duplicates").json()["group"] == ["p01.png"]
        assert client.get("/images/nope.png/duplicates").status_code == 404
        # The image route itself still serves a file whose id ends the same way.
        assert client.get("/images/p01.png").status_code == 200
        answer = client.get(
            "/search/image-to-image", params={"image_id": "dog-a.png", "collapse": "true"}
        )
        similar = body_of(ImageToImageResponse, answer)["results"]
        dogs = {"dog-a.png", "dog-b.png"}
        assert similar[0]["image_id"] in dogs
        assert [r["image_id"] for r in similar[1:]].count("dog-b.png") == 0
        assert similar[0]["duplicates"]["image_ids"] == sorted(dogs - {similar[0]["image_id"]})


def test_add_joins_and_remove_splits_groups(
    photos: tuple[Path, FakeEncoders], tmp_path: Path
) -> None:
    out, _ = photos
    live = tmp_path / "live"
    shutil.copytree(out, live)
    more = tmp_path / "more"
    more.mkdir()
    (more / "beach-9.png").write_bytes(burst_shot("beach.jpg", 250))
    (more / "cat-a.png").write_bytes(burst_shot("cat.jpg", 3))
    (more / "cat-b.png").write_bytes(burst_shot("cat.jpg", 4))
    assert add.main(["--model_dir", "m", "--images_dir", str(more), "--index_dir", str(live)]) == 0
    loaded = load_index(live)
    beach = [loaded.image_ids[r] for r in loaded.group_of(loaded.image_row("beach-9.png"))]
    assert beach == [*(f"beach-{i}.png" for i in range(4)), "beach-9.png"]
    assert loaded.manifest["near_duplicates"]["groups"] == 3
    ids = ["--image_id", "beach-0.png", "beach-1.png", "dog-a.png"]
    assert remove.main(["--index_dir", str(live), *ids]) == 0
    loaded = load_index(live)
    beach = [loaded.image_ids[r] for r in loaded.group_of(loaded.image_row("beach-2.png"))]
    assert beach == ["beach-2.png", "beach-3.png", "beach-9.png"]
    assert loaded.group_of(loaded.image_row("dog-b.png")) == [loaded.image_row("dog-b.png")]
    assert loaded.manifest["near_duplicates"] == {
        "threshold": 0.97,
        "groups": 2,
        "images_in_groups": 5,
    }


def test_no_groups_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for shade in range(2):
        (folder / f"b{shade}.png").write_bytes(burst_shot("beach.jpg", shade))
    encoders = FakeEncoders(dim=DIM)
    monkeypatch.setattr(builder, "load_encoders", lambda *_: encoders)
    out = tmp_path / "index"
    argv = ["--model_dir", "m", "--images_dir", str(folder), "--index_dir", str(out),
            "--near_duplicates", "off"]  # fmt: skip
    assert build.main(argv) == 0
    loaded = load_index(out)
    assert "near_duplicates" not in loaded.manifest and loaded.duplicate_groups is None
    with pytest.raises(SystemExit) as bad:
        build.main([*argv[:-1], "1.5"])
    assert bad.value.code == 2
