"""The synthetic demo dataset: Flickr8k layout, determinism, captions that match the pixels.

The caption checks below parse captions with their own word lists rather than the
generator's templates, so a template that drops an attribute or a relation is caught.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from training.demo_data import (
    IMAGES_DIR,
    SCENES_FILE,
    SPLIT_FILES,
    TOKEN_FILE,
    DemoConfig,
    DemoImage,
    caption_words,
    generate,
    generate_split,
    main,
    unique_fraction,
)
from training.demo_scenes import COLOURS

SMALL = DemoConfig(train=20, val=10, test=10, seed=3)

# Word -> attribute, written out here on purpose (not imported from the generator).
SIZE_OF = {w: "large" for w in ("large", "big", "huge")} | {
    w: "small" for w in ("small", "little", "tiny")
}
COLOUR_OF = {c: c for c in ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "white")}
COLOUR_OF |= {"turquoise": "cyan", "violet": "purple"}
SHAPE_OF = {
    "circle": "circle",
    "ball": "circle",
    "disc": "circle",
    "square": "square",
    "box": "square",
    "block": "square",
    "triangle": "triangle",
    "diamond": "diamond",
    "rhombus": "diamond",
    "cross": "cross",
    "plus": "cross",
}
RELATION_OF = {
    "left": "left",
    "right": "right",
    "above": "above",
    "over": "above",
    "top": "above",
    "below": "below",
    "under": "below",
    "beneath": "below",
    "underneath": "below",
}


@pytest.fixture(scope="module")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "data"
    generate(root, SMALL)
    return root


@pytest.fixture(scope="module")
def default_test_split() -> list[DemoImage]:
    return generate_split(DemoConfig(), "test")


def _records(images: list[DemoImage]) -> list[dict[str, Any]]:
    names = [im.name for im in images]
    return [im.record(names) for im in images]


def _holds(relation: str, a: dict[str, Any], b: dict[str, Any]) -> bool:
    """`a` is `relation` of `b`, clearly: boxes apart on that axis, offset mostly along it."""
    (ax, ay), (bx, by) = a["center"], b["center"]
    dx, dy = bx - ax, by - ay
    if relation == "left":
        return bool(a["bbox"][2] < b["bbox"][0] and dx >= 2 * abs(dy))
    if relation == "right":
        return _holds("left", b, a)
    if relation == "above":
        return bool(a["bbox"][3] < b["bbox"][1] and dy >= 2 * abs(dx))
    return _holds("above", b, a)


def check_caption(caption: str, record: dict[str, Any]) -> None:
    """Every object named with size, colour and shape; every relation word true in the image."""
    objects = record["objects"]
    words = caption.split()
    shapes = [i for i, w in enumerate(words) if w in SHAPE_OF]
    assert shapes, caption
    mentions: list[dict[str, str]] = [{"shape": SHAPE_OF[words[i]]} for i in shapes]
    # A size or colour word belongs to the nearest shape word ("a big red ball", "a big ball
    # in red"); a tie would make the caption ambiguous.
    for i, w in enumerate(words):
        for attr, table in (("size", SIZE_OF), ("colour", COLOUR_OF)):
            if w in table:
                dists = [abs(i - p) for p in shapes]
                nearest = [k for k, d in enumerate(dists) if d == min(dists)]
                assert len(nearest) == 1, f"{w!r} is between two shapes in {caption!r}"
                assert attr not in mentions[nearest[0]], f"two {attr}s for one shape: {caption!r}"
                mentions[nearest[0]][attr] = table[w]
    found = []
    for m in mentions:
        assert set(m) == {"shape", "size", "colour"}, f"incomplete mention {m} in {caption!r}"
        hits = [
            k
            for k, o in enumerate(objects)
            if (o["shape"], o["size"], o["colour"]) == (m["shape"], m["size"], m["colour"])
        ]
        assert len(hits) == 1, f"{m} matches {len(hits)} objects: {caption!r}"
        found.append(hits[0])
    assert set(found) == set(range(len(objects))), f"an object is not named: {caption!r}"
    relations = [i for i, w in enumerate(words) if w in RELATION_OF]
    claims: set[frozenset[int]] = set()
    for k in range(len(shapes) - 1):
        (p, a), (q, b) = (shapes[k], found[k]), (shapes[k + 1], found[k + 1])
        between = [i for i in relations if p < i < q]
        assert len(between) <= 1, caption
        if between:
            relation = RELATION_OF[words[between[0]]]
            assert _holds(relation, objects[a], objects[b]), (
                f"{relation!r} is false between objects {a} and {b}: {caption!r} / {objects}"
            )
            claims.add(frozenset((a, b)))
    assert all(shapes[0] < i < shapes[-1] for i in relations), f"stray relation: {caption!r}"
    # The claims must pin down the whole arrangement: they join all objects.
    joined = {0}
    for _ in objects:
        joined |= {k for c in claims if c & joined for k in c}
    assert joined == set(range(len(objects))), f"relations leave objects loose: {caption!r}"


def check_geometry(record: dict[str, Any], size: int) -> None:
    objects = record["objects"]
    for o in objects:
        x0, y0, x1, y1 = o["bbox"]
        assert 0 <= x0 < x1 <= size and 0 <= y0 < y1 <= size, o
    for i, a in enumerate(objects):
        for b in objects[i + 1 :]:
            apart_x = a["bbox"][2] + 2 <= b["bbox"][0] or b["bbox"][2] + 2 <= a["bbox"][0]
            apart_y = a["bbox"][3] + 2 <= b["bbox"][1] or b["bbox"][3] + 2 <= a["bbox"][1]
            assert apart_x or apart_y, f"objects too close: {a} {b}"
    sizes = {o["size"]: o["extent"] for o in objects}
    if len(sizes) == 2:
        assert sizes["large"] >= 1.6 * sizes["small"]


def _triples_in_reading_order(record: dict[str, Any]) -> list[tuple[str, str, str]]:
    axis = 1 if record["layout"] == "column" else 0
    objects = sorted(record["objects"], key=lambda o: o["center"][axis])
    return [(o["size"], o["colour"], o["shape"]) for o in objects]


def edit_kind(base: dict[str, Any], edited: dict[str, Any]) -> str | None:
    """Which single attribute tells `edited` from `base`, judged from positions; else None."""
    a, b = _triples_in_reading_order(base), _triples_in_reading_order(edited)
    if len(a) != len(b):
        return None
    if base["layout"] != edited["layout"]:
        return "axis" if a == b and len(a) > 1 else None
    diff = [i for i in range(len(a)) if a[i] != b[i]]
    if len(diff) == 1:
        changed = [k for k in range(3) if a[diff[0]][k] != b[diff[0]][k]]
        return ("size", "colour", "shape")[changed[0]] if len(changed) == 1 else None
    if len(diff) == 2:
        i, j = diff
        return "order" if (a[i], a[j]) == (b[j], b[i]) else None
    return None


# --- layout -------------------------------------------------------------------------------


def test_layout_is_exactly_flickr8k(small_root: Path) -> None:
    expected = {IMAGES_DIR, TOKEN_FILE, SCENES_FILE, *SPLIT_FILES.values()}
    assert {p.name for p in small_root.iterdir()} == expected
    assert IMAGES_DIR == "Flicker8k_Dataset" and TOKEN_FILE == "Flickr8k.token.txt"
    assert set(SPLIT_FILES.values()) == {
        "Flickr_8k.trainImages.txt",
        "Flickr_8k.devImages.txt",
        "Flickr_8k.testImages.txt",
    }
    images = sorted(p.name for p in (small_root / IMAGES_DIR).iterdir())
    assert len(images) == 40 and all(n.endswith(".jpg") for n in images)

    raw = (small_root / TOKEN_FILE).read_bytes()
    assert b"\r" not in raw and raw.endswith(b"\n")
    numbers: dict[str, list[int]] = {}
    for line in raw.decode("utf-8").splitlines():
        m = re.fullmatch(r"(\S+\.jpg)#(\d)\t(\S.*\S)", line)
        assert m, line
        numbers.setdefault(m[1], []).append(int(m[2]))
    assert sorted(numbers) == images
    assert all(v == [0, 1, 2, 3, 4] for v in numbers.values())

    listed: dict[str, list[str]] = {}
    for split, file_name in SPLIT_FILES.items():
        text = (small_root / file_name).read_text(encoding="utf-8")
        assert text.endswith("\n")
        listed[split] = text.splitlines()
        assert len(listed[split]) == len(set(listed[split])) == SMALL.count(split)
    all_listed = [n for names in listed.values() for n in names]
    assert sorted(all_listed) == images  # disjoint, and together every image once


def test_flickr8k_reader_serves_it(small_root: Path) -> None:
    from vsepp.datasets import load_split

    split = load_split(
        small_root / IMAGES_DIR,
        small_root / TOKEN_FILE,
        small_root / SPLIT_FILES["test"],
        dataset="flickr8k",
    )
    assert len(split.image_ids) == SMALL.test and len(split.captions) == 5 * SMALL.test
    scenes = {r["image"]: r for r in json.loads((small_root / SCENES_FILE).read_text())["images"]}
    for i, image_id in enumerate(split.image_ids):
        assert split.captions[5 * i : 5 * i + 5] == scenes[image_id]["captions"]


def test_scenes_json_matches_token_file(small_root: Path) -> None:
    scenes = json.loads((small_root / SCENES_FILE).read_text(encoding="utf-8"))
    assert scenes["config"]["seed"] == SMALL.seed
    from_tokens: dict[str, list[str]] = {}
    for line in (small_root / TOKEN_FILE).read_text(encoding="utf-8").splitlines():
        key, caption = line.split("\t")
        from_tokens.setdefault(key.split("#")[0], []).append(caption)
    assert {r["image"]: r["captions"] for r in scenes["images"]} == from_tokens
    for split, file_name in SPLIT_FILES.items():
        names = (small_root / file_name).read_text().splitlines()
        assert [r["image"] for r in scenes["images"] if r["split"] == split] == names


# --- determinism --------------------------------------------------------------------------


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_same_seed_same_bytes_other_seed_differs(small_root: Path, tmp_path: Path) -> None:
    generate(tmp_path / "again", SMALL)
    assert _files(tmp_path / "again") == _files(small_root)

    generate(tmp_path / "other", DemoConfig(train=20, val=10, test=10, seed=4))
    other = _files(tmp_path / "other")
    first = _files(small_root)
    assert other[TOKEN_FILE] != first[TOKEN_FILE]
    same_images = [k for k in first if k.startswith(IMAGES_DIR) and first[k] == other.get(k)]
    assert not same_images


# --- captions and scenes ------------------------------------------------------------------


def test_captions_agree_with_scenes(small_root: Path, default_test_split: list[DemoImage]) -> None:
    written = json.loads((small_root / SCENES_FILE).read_text(encoding="utf-8"))["images"]
    for record in written + _records(default_test_split):
        assert len(record["captions"]) == 5
        assert len(set(record["captions"])) == 5, record["captions"]
        assert record["layout"] in ("single", "row", "column")
        assert (record["layout"] == "single") == (len(record["objects"]) == 1)
        assert 1 <= len(record["objects"]) <= 3
        check_geometry(record, SMALL.image_size)
        for caption in record["captions"]:
            check_caption(caption, record)


def test_checker_catches_wrong_captions(default_test_split: list[DemoImage]) -> None:
    record = next(r for r in _records(default_test_split) if r["layout"] == "row")
    caption = record["captions"][0]
    flipped = re.sub(r"\b(left|right)\b", lambda m: "right" if m[1] == "left" else "left", caption)
    with pytest.raises(AssertionError):
        check_caption(flipped, record)
    without_size = " ".join(w for w in caption.split() if w not in SIZE_OF)
    with pytest.raises(AssertionError):
        check_caption(without_size, record)


def test_hard_negatives_are_single_attribute_edits(default_test_split: list[DemoImage]) -> None:
    records = _records(default_test_split)
    by_name = {r["image"]: r for r in records}
    edited = [r for r in records if r["edit_of"] is not None]
    assert len(edited) >= 0.2 * len(records)
    kinds = Counter(edit_kind(by_name[r["edit_of"]], r) for r in edited)
    assert None not in kinds, kinds
    assert set(kinds) == {"colour", "shape", "size", "order", "axis"}
    for r in edited:
        assert edit_kind(by_name[r["edit_of"]], r) == r["edit"]


def test_default_test_split_descriptions_are_unique(default_test_split: list[DemoImage]) -> None:
    assert len(default_test_split) == 1000
    assert unique_fraction(default_test_split) >= 0.95
    # The description space is mostly 2-3 objects, so uniqueness is not luck of a small split.
    counts = Counter(len(im.scene.objects) for im in default_test_split)
    assert counts[2] + counts[3] >= 900


def test_vocabulary_is_modest_and_every_word_frequent_in_train(
    default_test_split: list[DemoImage],
) -> None:
    config = DemoConfig()
    train = generate_split(config, "train")
    val = generate_split(config, "val")
    assert len(train) == 6000 and len(val) == 500
    in_train = Counter(w for im in train for c in im.captions for w in caption_words(c))
    everywhere = {
        w
        for im in [*train, *val, *default_test_split]
        for c in im.captions
        for w in caption_words(c)
    }
    assert len(everywhere) < 200
    rare = {w: in_train[w] for w in everywhere if in_train[w] < 4}
    assert not rare, rare
    for words in (SIZE_OF, COLOUR_OF, SHAPE_OF, RELATION_OF):
        assert set(words) <= everywhere  # every synonym in use, none forgotten by the checker


# --- pixels -------------------------------------------------------------------------------


def _nearest_palette(rgb: np.ndarray) -> str:
    return min(COLOURS, key=lambda c: float(np.sum((rgb - np.array(COLOURS[c])) ** 2)))


@pytest.mark.parametrize("image_size", [64, 96])
def test_images_are_rgb_and_colours_sit_at_centres(tmp_path: Path, image_size: int) -> None:
    config = DemoConfig(train=12, val=4, test=4, seed=9, image_size=image_size)
    root = tmp_path / "data"
    generate(root, config)
    records = json.loads((root / SCENES_FILE).read_text(encoding="utf-8"))["images"]
    for record in records:
        with Image.open(root / IMAGES_DIR / record["image"]) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            assert im.size == (image_size, image_size)
            pixels = np.asarray(im, dtype=np.int32)
        check_geometry(record, image_size)
        assert pixels[0, 0].max() < 70  # the corner is background: a dark grey
        for o in record["objects"]:
            x, y = (int(v) for v in o["center"])
            rgb = pixels[y, x]
            assert _nearest_palette(rgb) == o["colour"], (record["image"], o, rgb)
            assert np.abs(rgb - np.array(o["rgb"])).max() <= 40, (record["image"], o, rgb)


# --- writing ------------------------------------------------------------------------------


def test_refuses_a_non_empty_dir_unless_forced(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (root / "keep.txt").write_text("mine")
    config = DemoConfig(train=2, val=1, test=1)
    with pytest.raises(FileExistsError, match="not empty"):
        generate(root, config)
    assert [p.name for p in root.iterdir()] == ["keep.txt"]

    generate(root, config, force=True)
    assert not (root / "keep.txt").exists() and (root / TOKEN_FILE).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no temp dirs left

    empty = tmp_path / "empty"
    empty.mkdir()
    generate(empty, config)  # an empty directory is fine without force
    assert (empty / TOKEN_FILE).is_file()


def test_a_failed_write_leaves_the_old_dataset_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.demo_data as demo_data

    root = tmp_path / "data"
    config = DemoConfig(train=3, val=2, test=2)
    generate(root, config)
    before = _files(root)
    calls = []

    def failing(image: DemoImage, cfg: DemoConfig) -> bytes:
        calls.append(image.name)
        if len(calls) > 2:
            raise RuntimeError("disk full")
        return b"x"

    monkeypatch.setattr(demo_data, "render_image", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        generate(root, DemoConfig(train=3, val=2, test=2, seed=1), force=True)
    assert _files(root) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="train"):
        DemoConfig(train=-1)
    with pytest.raises(ValueError, match="image_size"):
        DemoConfig(image_size=8)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    argv = ["--out", str(out), "--train", "6", "--val", "2", "--test", "3", "--seed", "5"]
    assert main([*argv, "--image_size", "48"]) == 0
    printed = capsys.readouterr().out
    assert "unique" in printed and "vocabulary" in printed
    assert len((out / SPLIT_FILES["test"]).read_text().splitlines()) == 3
    with Image.open(next((out / IMAGES_DIR).iterdir())) as im:
        assert im.size == (48, 48)

    assert main(argv) == 2  # refuses the now non-empty directory
    assert "not empty" in capsys.readouterr().err
    assert main([*argv, "--force"]) == 0
