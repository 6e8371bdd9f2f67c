"""Search your own images: a folder or a list indexed, searched over HTTP, kept current.

On the session's tiny demo model, through the real programs (`index.build`, `index.add`,
`index.remove`) and a real uvicorn on 127.0.0.1.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from index import add, build, remove
from index.store import load_index
from service.config import Settings
from service.main import create_app
from service.schemas import TextSearchResponse
from tests.image_files import photo, png_header_only, quirky_images
from tests.service_helpers import (
    body_of,
    hammer_text_search,
    image_bytes,
    shape_image,
    uvicorn_in_thread,
    wait_for,
    wait_healthy,
)

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "s3cret-admin"


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's folder with every quirk a real one has."""
    root = tmp_path_factory.mktemp("own") / "Pictures"
    kinds = quirky_images()
    for name, data in kinds.items():
        _write(root / "kinds" / name, data)
    _write(root / "holiday 2024" / "plage à Nice.jpg", image_bytes(photo(400, 300, 5), "JPEG"))
    _write(root / "holiday 2024" / "copy of baseline.jpg", kinds["baseline.jpg"])  # duplicate
    raw = os.fsencode(root / "holiday 2024") + b"/caf\xe9.png"  # Latin-1 name, not UTF-8
    with open(raw, "wb") as f:
        f.write(image_bytes(photo(seed=6), "PNG"))
    _write(root / "broken" / "empty.jpg", b"")
    _write(root / "broken" / "truncated.jpg", image_bytes(photo(seed=7), "JPEG")[:900])
    _write(root / "broken" / "text.jpg", b"not a picture at all\n")
    _write(root / "broken" / "codec.bmp", image_bytes(shape_image("red", "square"), "PPM"))
    _write(root / "broken" / "bomb.png", png_header_only(60_000, 60_000))
    os.symlink(root / "nowhere.jpg", root / "broken" / "dangling.jpg")  # unreadable
    _write(root / ".thumbnails" / "hidden.jpg", kinds["baseline.jpg"])
    _write(root / "notes.txt", b"not an image extension")
    os.symlink(root, root / "holiday 2024" / "loop")  # a link back up
    return root


@pytest.fixture(scope="module")
def built(folder: Path, demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("own-index") / "idx"
    argv = ["--model_dir", str(demo_model_dir), "--images_dir", str(folder),
            "--index_dir", str(out), "--shard_size", "7", "--batch_size", "4"]  # fmt: skip
    assert build.main(argv) == 0
    return out


def own_copy(index_dir: Path, tmp_path: Path) -> Path:
    """A copy of a module's index for a test that changes it, so no other test sees the
    change (the tests stand alone, in any order)."""
    out = tmp_path / "own-copy" / index_dir.name
    shutil.copytree(index_dir, out, symlinks=True)
    return out


def test_a_folder_with_every_quirk_is_indexed(built: Path) -> None:
    loaded = load_index(built)
    ids = set(loaded.image_ids)
    assert "holiday 2024/plage à Nice.jpg" in ids
    assert "holiday 2024/caf%E9.png" in ids  # stable text for a name that is not UTF-8
    # Every kind is indexed (baseline.jpg as the alias of its earlier byte-identical copy).
    assert {f"kinds/{name}" for name in quirky_images()} - {"kinds/baseline.jpg"} <= ids
    assert not any("hidden" in i or i.endswith(".txt") or "loop/" in i for i in ids)
    skipped = {s["image_id"]: s["reason"] for s in loaded.manifest["skipped_images"]}
    reasons = {k.split("/", 1)[1]: v.split(":", 1)[0] for k, v in skipped.items()}
    assert reasons == {
        "empty.jpg": "empty",
        "truncated.jpg": "corrupt",
        "text.jpg": "not_an_image",
        "codec.bmp": "unsupported",
        "bomb.png": "too_many_pixels",
        "dangling.jpg": "unreadable",
    }
    # The byte-identical copy is indexed once, the other path kept as an alias.
    kept = loaded.image_records[loaded.image_row("holiday 2024/copy of baseline.jpg")]  # type: ignore[index]
    assert kept.aliases == ("kinds/baseline.jpg",) and loaded.manifest["source"]["duplicates"] == 1
    assert "kinds/baseline.jpg" not in ids
    assert kept.width == 96 and kept.height == 72
    rotated = loaded.image_records[loaded.image_row("kinds/exif-rotated.jpg")]  # type: ignore[index]
    assert (rotated.width, rotated.height) == (72, 96)  # upright
    assert loaded.manifest["captions"]["count"] == 0
    assert not (built.parent / "idx.shards").exists()  # shards go once the index is whole


def test_source_errors_name_the_file_and_write_nothing(
    demo_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "idx"
    base = ["--model_dir", str(demo_model_dir), "--index_dir", str(out)]
    (tmp_path / "empty").mkdir()
    assert build.main([*base, "--images_dir", str(tmp_path / "empty")]) == 2
    assert "no image files" in capsys.readouterr().err
    bad = tmp_path / "list.csv"
    bad.write_text("file,caption\na.jpg,x\n")
    assert build.main([*base, "--list", str(bad)]) == 2
    assert f"{bad}: no 'path' column" in capsys.readouterr().err
    bad.write_text("path,kind\na.jpg,photo\nb.jpg,photo,extra\n")
    assert build.main([*base, "--list", str(bad)]) == 2
    assert f"{bad}:3: 3 fields" in capsys.readouterr().err
    rows = tmp_path / "list.jsonl"
    rows.write_text('{"path": "a.jpg"}\n{"path": \n')
    assert build.main([*base, "--list", str(rows)]) == 2
    assert f"{rows}:2: not a JSON object" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".idx*"))


@pytest.fixture(scope="module")
def listed(demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An index from a CSV list with captions and metadata columns."""
    root = tmp_path_factory.mktemp("listed")
    rows = []
    for i, (colour, shape) in enumerate(
        [("red", "square"), ("blue", "circle"), ("green", "square")]
    ):
        _write(root / "img" / f"{i}.png", image_bytes(shape_image(colour, shape), "PNG"))
        rows.append({"path": f"img/{i}.png", "image_id": f"item-{i}",
                     "captions": json.dumps([f"a {colour} {shape}", f"{colour} {shape} on white"]),
                     "photographer": f"person {i}", "year": str(2020 + i)})  # fmt: skip
    with open(root / "items.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = root / "idx"
    argv = ["--model_dir", str(demo_model_dir), "--list", str(root / "items.csv"),
            "--index_dir", str(out)]  # fmt: skip
    assert build.main(argv) == 0
    return out


def test_a_list_keeps_captions_and_metadata(listed: Path, demo_model_dir: Path) -> None:
    loaded = load_index(listed)
    assert loaded.image_ids == ["item-0", "item-1", "item-2"]
    assert loaded.captions_of(1) == ["a blue circle", "blue circle on white"]
    record = loaded.image_records[2]
    assert record.meta == {"photographer": "person 2", "year": 2022}  # a column of integers
    app = create_app(Settings(), _encoders(demo_model_dir), loaded)
    with uvicorn_in_thread(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        answer = client.post("/search/text", json={"query": "a red square", "k": 3})
        body = body_of(TextSearchResponse, answer)
        assert len(body["results"]) == 3
        metas = {r["image_id"]: r["meta"] for r in body["results"]}
        assert metas["item-0"] == {"photographer": "person 0", "year": 2020}
        assert all(r["width"] == 64 and r["height"] == 64 for r in body["results"])


def test_parquet_and_jsonl_lists_read_the_same(tmp_path: Path) -> None:
    import pyarrow as pa  # the dev extra's (and the parquet extra's)
    import pyarrow.parquet as pq

    from index.sources import read_list

    table = pa.table({"path": ["a.jpg", "/abs/b.jpg"], "captions": [["x", "y"], ["z"]],
                      "rating": [4, 5]})  # fmt: skip
    pq.write_table(table, tmp_path / "l.parquet")
    (tmp_path / "l.jsonl").write_text(
        '{"path": "a.jpg", "captions": ["x", "y"], "rating": 4}\n'
        '{"path": "/abs/b.jpg", "captions": "z", "rating": 5}\n'
    )
    for name in ("l.parquet", "l.jsonl"):
        items = list(read_list(tmp_path / name))
        assert [i.image_id for i in items] == ["a.jpg", "abs/b.jpg"], name
        assert items[0].path == tmp_path / "a.jpg" and items[1].path == Path("/abs/b.jpg")
        assert [i.captions for i in items] == [("x", "y"), ("z",)]
        assert [i.meta for i in items] == [{"rating": 4}, {"rating": 5}]


def _encoders(model_dir: Path) -> Any:
    from vsepp.model_dir import load_encoders

    return load_encoders(model_dir, "auto")  # as the service loads it (VSEPP_PRECISION)


def test_search_your_own_photos_over_http(
    built: Path, folder: Path, demo_model_dir: Path, tmp_path: Path
) -> None:
    built = own_copy(built, tmp_path)  # index.add below changes it
    encoders = _encoders(demo_model_dir)
    settings = Settings(index_dir=built, admin_token=TOKEN, thumb_cache_dir=tmp_path / "thumbs")
    app = create_app(settings, encoders, load_index(built))
    upload = (folder / "kinds" / "photo.webp").read_bytes()
    with uvicorn_in_thread(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        body = client.post("/search/text", json={"query": "a red circle", "k": 5}).json()
        assert len(body["results"]) == 5 and body["results"][0]["thumb_url"].startswith("/thumbs/")
        page2 = client.get("/search/text", params={"q": "a red circle", "k": 3, "offset": 3}).json()
        assert [r["rank"] for r in page2["results"]] == [4, 5, 6]
        assert page2["results"][:2] == body["results"][3:5]
        # Image to image: the uploaded file's indexed copy finds itself first.
        same = client.get("/search/image-to-image", params={"image_id": "kinds/photo.webp"})
        assert same.json()["results"][0]["image_id"] == "kinds/photo.webp"
        # No captions yet: image-to-caption says so and how to add them.
        refused = client.post("/search/image", files={"file": ("x.webp", upload)})
        assert refused.status_code == 409 and "index.add --captions" in refused.json()["detail"]
        thumb = client.get("/thumbs/" + "holiday%202024/plage%20%C3%A0%20Nice.jpg?size=128")
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        with Image.open(io.BytesIO(thumb.content)) as im:
            assert im.size == (128, 96)  # at most 128 a side, the aspect kept
        assert client.get("/thumbs/kinds/photo.webp?size=100").status_code == 422
        assert client.get("/thumbs/../etc/passwd").status_code == 404

        # Captions tied to no image make image-to-caption work, after a reload.
        corpus = tmp_path / "captions.txt"
        corpus.write_text("a red circle on white\na blue square\na green thing\n")
        assert add.main(["--model_dir", str(demo_model_dir), "--index_dir", str(built),
                         "--captions", str(corpus)]) == 0  # fmt: skip
        headers = {"Authorization": f"Bearer {TOKEN}"}
        reloaded = client.post("/admin/reload", headers=headers)
        assert reloaded.status_code == 200 and reloaded.json()["captions"] == 3
        found = client.post("/search/image", files={"file": ("x.webp", upload)}, data={"k": "3"})
        assert found.status_code == 200
        assert {r["caption"] for r in found.json()["results"]} == set(
            corpus.read_text().split("\n")[:3]
        )
        assert all(r["image_id"] is None for r in found.json()["results"])


def test_add_and_remove_keep_the_index_current(
    built: Path, demo_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    built = own_copy(built, tmp_path)  # added to and removed from below
    before = load_index(built)
    new = tmp_path / "new"
    for i in range(3):
        _write(new / f"n{i}.jpg", image_bytes(photo(seed=40 + i), "JPEG"))
    _write(new / "again.jpg", (built / "images" / "kinds" / "photo.png").read_bytes())
    argv = ["--model_dir", str(demo_model_dir), "--index_dir", str(built), "--images_dir", str(new)]
    assert add.main(argv) == 0
    after = load_index(built)
    assert after.image_ids[: len(before.image_ids)] == before.image_ids
    assert set(after.image_ids[len(before.image_ids) :]) >= {"n0.jpg", "n1.jpg", "n2.jpg"}
    assert add.main(argv) == 0  # nothing new the second time
    assert load_index(built).image_ids == after.image_ids
    # Remove by id, then whatever lost its source file.
    assert remove.main(["--index_dir", str(built), "--image_id", "n0.jpg"]) == 0
    (new / "n1.jpg").unlink()
    assert remove.main(["--index_dir", str(built), "--missing"]) == 0
    final = load_index(built)
    assert "n0.jpg" not in final.image_ids and "n1.jpg" not in final.image_ids
    assert "n2.jpg" in final.image_ids
    assert final.manifest["images"]["recall_at_10"] == 1.0  # re-measured, flat stays exact
    assert remove.main(["--index_dir", str(built), "--image_id", "n0.jpg"]) == 2
    assert "no image 'n0.jpg'" in capsys.readouterr().err


def test_a_killed_build_resumes_to_the_same_index(demo_model_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "many"
    for i in range(160):
        _write(src / f"{i:03d}.png", image_bytes(photo(24, 18, seed=i), "PNG"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    base = [sys.executable, "-m", "index.build", "--model_dir", str(demo_model_dir),
            "--images_dir", str(src), "--shard_size", "10", "--batch_size", "5"]  # fmt: skip
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*base, "--index_dir", str(killed)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    shards = Path(f"{killed}.shards")
    deadline = time.monotonic() + 300
    while len(list(shards.glob("shard-*.json"))) < 3 and time.monotonic() < deadline:
        assert proc.poll() is None, "the build ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done_before = len(list(shards.glob("shard-*.json")))
    assert 3 <= done_before < 16 and not killed.exists()
    resumed = subprocess.run([*base, "--index_dir", str(killed), "--resume"], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    whole = tmp_path / "whole"
    once = subprocess.run([*base, "--index_dir", str(whole)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert once.returncode == 0, once.stderr[-2000:]
    a, b = load_index(killed, mmap=False), load_index(whole, mmap=False)
    assert a.image_ids == b.image_ids and len(a.image_ids) == 160
    np.testing.assert_allclose(a.vectors("images"), b.vectors("images"), atol=1e-6)


def test_reload_under_load_fails_no_request(
    listed: Path, demo_model_dir: Path, tmp_path: Path, folder: Path
) -> None:
    encoders = _encoders(demo_model_dir)
    live = tmp_path / "live"
    argv = ["--model_dir", str(demo_model_dir), "--index_dir", str(live)]
    assert build.main([*argv, "--images_dir", str(folder / "kinds")]) == 0
    old_ids = set(load_index(live).image_ids)
    settings = Settings(index_dir=live, admin_token=TOKEN)
    app = create_app(settings, encoders, load_index(live))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    answers: list[Any] = []
    errors: list[str] = []
    stop = threading.Event()
    with uvicorn_in_thread(app) as base, httpx.Client(base_url=base, timeout=60) as admin:
        assert admin.post("/admin/reload").status_code == 401
        assert (
            admin.post("/admin/reload", headers={"Authorization": "Bearer no"}).status_code == 403
        )
        threads = [threading.Thread(target=hammer_text_search, args=(base, stop, answers, errors))
                   for _ in range(16)]  # fmt: skip
        for t in threads:
            t.start()
        try:
            wait_for(lambda: any(set(a) <= old_ids for a in list(answers)), "an old answer")
            # A rebuilt index of other images, written over the live directory.
            assert build.main([*argv, "--list", str(listed.parent / "items.csv")]) == 0
            new_ids = set(load_index(live).image_ids)
            assert admin.post("/admin/reload", headers=headers).status_code == 200
            wait_for(lambda: any(set(a) == new_ids for a in list(answers)), "a new answer")
            # A broken rebuild is refused; the new index keeps serving.
            manifest = json.loads((live / "manifest.json").read_text())
            (live / "manifest.json").write_text(json.dumps({**manifest, "dim": 7}))
            refused = admin.post("/admin/reload", headers=headers)
            assert (
                refused.status_code == 409 and "old index still serves" in refused.json()["detail"]
            )
            health = admin.get("/health").json()
            assert health["reload"]["last_error"] and health["reload"]["reloads"] == 1
            assert health["index"]["build_id"] == manifest["build_id"]
            # Searches go on after the refusal (all checked whole below).
            answered = len(answers) + 32
            wait_for(lambda: len(answers) >= answered, "32 answers after the refusal")
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=60)
    assert errors == []
    # Every answer comes whole from one index; both served during the run.
    assert old_ids.isdisjoint(new_ids)
    whole = [(set(a) <= old_ids and len(a) == 5) or (set(a) == new_ids) for a in answers]
    assert all(whole), [a for a, ok in zip(answers, whole, strict=True) if not ok][:3]
    assert any(set(a) <= old_ids for a in answers) and any(set(a) <= new_ids for a in answers)


def test_sighup_reloads_a_served_index(demo_model_dir: Path, folder: Path, tmp_path: Path) -> None:
    from tests.service_helpers import free_port, serve_subprocess, service_command, service_env

    live = tmp_path / "live"
    argv = ["--model_dir", str(demo_model_dir), "--index_dir", str(live)]
    assert build.main([*argv, "--images_dir", str(folder / "kinds")]) == 0
    port = free_port()
    command = service_command(port, demo_model_dir, live)
    env = service_env(TF_CPP_MIN_LOG_LEVEL="3")
    with (
        serve_subprocess(command, port=port, log=tmp_path / "server.log", env=env) as server,
        httpx.Client(base_url=server.base_url, timeout=10) as client,
    ):
        first = wait_healthy(client)["index"]["build_id"]
        assert build.main([*argv, "--images_dir", str(folder / "holiday 2024")]) == 0
        server.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        health = wait_healthy(client)
        while health["index"]["build_id"] == first and time.monotonic() < deadline:
            time.sleep(0.1)
            health = wait_healthy(client)
        assert health["index"]["build_id"] != first and health["reload"]["reloads"] == 1
        assert server.process.poll() is None  # reloaded, not restarted
