"""Dataset readers on small generated datasets: three formats, real-file quirks, errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from vsepp.datasets import (
    DatasetError,
    MissingImagesError,
    SplitData,
    load_split,
)

# Four images, five captions each; a non-ASCII caption checks the UTF-8 (and BOM) handling.
CAPTIONS: dict[str, list[str]] = {
    "1000_aaa.jpg": [f"a dog runs on the grass {i}" for i in range(5)],
    "1001_bbb.jpg": [f"two people sit in a café {i}" for i in range(5)],
    "1002_ccc.jpg": [f"a child climbs the stairs {i}" for i in range(5)],
    "1003_ddd.jpg": [f"a man rides a red bike {i}" for i in range(5)],
}
# Split file order differs from the token file's on purpose: the split file decides.
SPLITS: dict[str, list[str]] = {
    "train": ["1002_ccc.jpg", "1000_aaa.jpg"],
    "val": ["1003_ddd.jpg"],
    "test": ["1001_bbb.jpg"],
}
FLICKR8K_SPLIT_FILES = {
    "train": "Flickr_8k.trainImages.txt",
    "val": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}


def write_jpeg(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (200, 30, 30)).save(path, "JPEG")


def write_text(path: Path, lines: list[str], *, newline: str = "\n", final: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = newline.join(lines) + (newline if final else "")
    path.write_bytes(text.encode("utf-8"))
    return path


def token_lines(captions: dict[str, list[str]]) -> list[str]:
    return [
        f"{name}#{n}\t{text}" for name, texts in captions.items() for n, text in enumerate(texts)
    ]


def write_flickr8k(root: Path, captions: dict[str, list[str]] | None = None) -> Path:
    """Flickr8k seed layout under root; returns root."""
    captions = CAPTIONS if captions is None else captions
    for name in captions:
        write_jpeg(root / "Flicker8k_Dataset" / name)
    write_text(root / "Flickr8k.token.txt", token_lines(captions))
    for split, names in SPLITS.items():
        write_text(root / FLICKR8K_SPLIT_FILES[split], names)
    return root


def write_flickr30k(root: Path) -> Path:
    """Flickr30k seed layout under root: split files hold ids without .jpg."""
    for name in CAPTIONS:
        write_jpeg(root / "flickr30k-images" / name)
    write_text(root / "results_20130124.token", token_lines(CAPTIONS))
    for split, names in SPLITS.items():
        write_text(root / f"{split}.txt", [name.removesuffix(".jpg") for name in names])
    return root


def karpathy_image(
    name: str, split: str, captions: list[str], filepath: str | None = None
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "filename": name,
        "imgid": 0,
        "split": split,
        "sentences": [{"raw": text, "tokens": text.split()} for text in captions],
    }
    if filepath is not None:
        entry["filepath"] = filepath
    return entry


def write_karpathy(root: Path, images: list[dict[str, Any]], dataset: str = "flickr8k") -> Path:
    for index, entry in enumerate(images):
        entry["imgid"] = index
        write_jpeg(root / "images" / entry.get("filepath", "") / entry["filename"])
    path = root / f"dataset_{dataset}.json"
    path.write_text(json.dumps({"images": images, "dataset": dataset}), encoding="utf-8")
    return path


def karpathy_like_splits(root: Path) -> Path:
    """The content of CAPTIONS/SPLITS as Karpathy JSON, images in split-file order."""
    images = [
        karpathy_image(name, split, CAPTIONS[name])
        for split, names in SPLITS.items()
        for name in names
    ]
    return write_karpathy(root, images)


def expected(split: str) -> tuple[list[str], list[str]]:
    names = SPLITS[split]
    return names, [text for name in names for text in CAPTIONS[name]]


def load8k(root: Path, split: str = "train", **kwargs: Any) -> SplitData:
    return load_split(
        root / "Flicker8k_Dataset",
        root / "Flickr8k.token.txt",
        root / FLICKR8K_SPLIT_FILES[split],
        **kwargs,
    )


# --- the three formats ------------------------------------------------------------------


def test_flickr8k_layout_in_split_file_order(tmp_path: Path) -> None:
    root = write_flickr8k(tmp_path)
    data = load8k(root)
    names, captions = expected("train")
    assert data.name == "train"
    assert data.image_ids == names
    assert data.captions == captions
    assert data.image_paths == [(root / "Flicker8k_Dataset" / n).absolute() for n in names]
    assert all(path.is_absolute() and path.is_file() for path in data.image_paths)
    assert data.captions_of(1) == CAPTIONS["1000_aaa.jpg"]
    assert data.captions_per_image == 5
    assert data.skipped == {}
    assert data.ignored == {"token_lines_not_in_split": 10}
    assert load8k(root, "val").name == "val"  # Flickr8k's "dev" is our "val"


def test_flickr30k_layout_ids_without_jpg(tmp_path: Path) -> None:
    root = write_flickr30k(tmp_path)
    data = load_split(
        root / "flickr30k-images", root / "results_20130124.token", root / "train.txt"
    )
    names, captions = expected("train")
    assert (data.name, data.image_ids, data.captions) == ("train", names, captions)


def test_karpathy_json_by_split_name_in_json_order(tmp_path: Path) -> None:
    images = [
        karpathy_image("b.jpg", "test", CAPTIONS["1001_bbb.jpg"]),
        karpathy_image("z.jpg", "train", CAPTIONS["1000_aaa.jpg"]),
        karpathy_image("a.jpg", "train", CAPTIONS["1002_ccc.jpg"]),
    ]
    json_path = write_karpathy(tmp_path, images)
    data = load_split(tmp_path / "images", json_path, "train")
    assert data.name == "train"
    assert data.image_ids == ["z.jpg", "a.jpg"]
    assert data.captions == CAPTIONS["1000_aaa.jpg"] + CAPTIONS["1002_ccc.jpg"]
    assert data.ignored == {"images_not_in_split": 1}


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_same_content_gives_identical_splits_in_all_layouts(tmp_path: Path, split: str) -> None:
    r8 = write_flickr8k(tmp_path / "f8k")
    r30 = write_flickr30k(tmp_path / "f30k")
    json_path = karpathy_like_splits(tmp_path / "kj")
    from_8k = load8k(r8, split)
    from_30k = load_split(r30 / "flickr30k-images", r30 / "results_20130124.token", split)
    from_json = load_split(tmp_path / "kj" / "images", json_path, split)
    pairs = [
        [(d.image_ids[i], d.captions_of(i)) for i in range(len(d.image_ids))]
        for d in (from_8k, from_30k, from_json)
    ]
    assert pairs[0] == pairs[1] == pairs[2]
    assert pairs[0] == [(name, CAPTIONS[name]) for name in SPLITS[split]]
    assert from_8k.name == from_30k.name == from_json.name == split


def test_coco_filepath_joins_image_id_and_path(tmp_path: Path) -> None:
    images = [
        karpathy_image(
            "COCO_val2014_000000000042.jpg", "test", CAPTIONS["1000_aaa.jpg"], "val2014"
        ),
        karpathy_image(
            "COCO_train2014_000000000007.jpg", "test", CAPTIONS["1001_bbb.jpg"], "train2014"
        ),
        karpathy_image(
            "COCO_val2014_000000000099.jpg", "train", CAPTIONS["1002_ccc.jpg"], "val2014"
        ),
    ]
    json_path = write_karpathy(tmp_path, images, dataset="coco")
    data = load_split(tmp_path / "images", json_path, "test", dataset="coco")
    assert data.image_ids == [
        "val2014/COCO_val2014_000000000042.jpg",
        "train2014/COCO_train2014_000000000007.jpg",
    ]
    root = (tmp_path / "images").absolute()
    assert data.image_paths == [root / image_id for image_id in data.image_ids]
    assert all(path.is_file() for path in data.image_paths)
    # A COCO file moved out of its folder is missing, not silently found elsewhere.
    (root / "val2014" / "COCO_val2014_000000000042.jpg").rename(
        root / "COCO_val2014_000000000042.jpg"
    )
    with pytest.raises(MissingImagesError, match=r"val2014/COCO_val2014_000000000042\.jpg"):
        load_split(root, json_path, "test")


def test_fold_restval_adds_restval_to_train_in_json_order(tmp_path: Path) -> None:
    images = [
        karpathy_image("t1.jpg", "train", CAPTIONS["1000_aaa.jpg"]),
        karpathy_image("r1.jpg", "restval", CAPTIONS["1001_bbb.jpg"]),
        karpathy_image("v1.jpg", "val", CAPTIONS["1002_ccc.jpg"]),
        karpathy_image("t2.jpg", "train", CAPTIONS["1003_ddd.jpg"]),
    ]
    json_path = write_karpathy(tmp_path, images, dataset="coco")
    plain = load_split(tmp_path / "images", json_path, "train")
    folded = load_split(tmp_path / "images", json_path, "train", fold_restval=True)
    assert plain.image_ids == ["t1.jpg", "t2.jpg"]
    assert folded.image_ids == ["t1.jpg", "r1.jpg", "t2.jpg"]
    assert folded.name == "train"
    assert folded.captions_of(1) == CAPTIONS["1001_bbb.jpg"]
    assert load_split(tmp_path / "images", json_path, "restval").image_ids == ["r1.jpg"]
    # Only train folds restval in.
    assert load_split(tmp_path / "images", json_path, "val", fold_restval=True).image_ids == [
        "v1.jpg"
    ]


# --- quirks of real files ---------------------------------------------------------------


def test_crlf_bom_blank_lines_and_no_final_newline(tmp_path: Path) -> None:
    root = write_flickr8k(tmp_path)
    lines = token_lines(CAPTIONS)
    lines.insert(3, "")
    lines.insert(7, "   ")
    token = write_text(root / "Flickr8k.token.txt", lines, newline="\r\n", final=False)
    token.write_bytes(b"\xef\xbb\xbf" + token.read_bytes())
    split = write_text(
        root / FLICKR8K_SPLIT_FILES["train"], ["", *SPLITS["train"], ""], newline="\r\n"
    )
    split.write_bytes(b"\xef\xbb\xbf" + split.read_bytes().rstrip(b"\r\n"))
    data = load8k(root)
    names, captions = expected("train")
    assert data.image_ids == names
    assert data.captions == captions  # no "\r", no BOM glued to the first name
    assert data.ignored["blank_lines"] == 3  # two in the token file, one leading in the split
    assert data.skipped == {}


def test_old_mac_line_endings(tmp_path: Path) -> None:
    root = write_flickr8k(tmp_path)
    write_text(root / "Flickr8k.token.txt", token_lines(CAPTIONS), newline="\r")
    assert load8k(root).captions == expected("train")[1]


def test_names_with_and_without_jpg_in_either_file(tmp_path: Path) -> None:
    root = write_flickr8k(tmp_path)
    lines = [
        line.replace(".jpg#", "#", 1) if line.startswith("1002_ccc") else line
        for line in token_lines(CAPTIONS)
    ]
    write_text(root / "Flickr8k.token.txt", lines)
    write_text(root / FLICKR8K_SPLIT_FILES["train"], ["1002_ccc.jpg", "1000_aaa"])
    data = load8k(root)
    names, captions = expected("train")
    assert data.image_ids == names  # file names, .jpg added where the files left it off
    assert data.captions == captions


def test_token_lines_for_other_images_are_ignored_and_counted(tmp_path: Path) -> None:
    root = write_flickr8k(tmp_path)
    # Flickr8k.token.txt really has lines for "2258277193_586949ec62.jpg.1", a file that
    # is in no split and not in the images folder.
    stray = [f"2258277193_586949ec62.jpg.1#{n}\tstray caption {n}" for n in range(5)]
    write_text(root / "Flickr8k.token.txt", token_lines(CAPTIONS) + stray)
    data = load8k(root)
    assert data.image_ids == SPLITS["train"]
    assert data.ignored == {"token_lines_not_in_split": 15}


def test_more_than_five_captions_keeps_first_five_in_file_order(tmp_path: Path) -> None:
    root = write_flickr8k(tmp_path)
    texts = [f"caption in file position {i}" for i in range(7)]
    # #N runs backwards and the lines are interleaved with another image's: file order wins.
    lines = []
    for i, text in enumerate(texts):
        lines.append(f"1000_aaa.jpg#{6 - i}\t{text}")
        if i < 5:
            lines.append(f"1002_ccc.jpg#{i}\t{CAPTIONS['1002_ccc.jpg'][i]}")
    write_text(root / "Flickr8k.token.txt", lines)
    data = load8k(root)
    assert data.captions_of(1) == texts[:5]
    assert data.captions_of(0) == CAPTIONS["1002_ccc.jpg"]
    assert data.skipped == {"captions_beyond_limit": 2}


def test_fewer_than_five_captions_is_an_error_naming_image_and_count(tmp_path: Path) -> None:
    root = write_flickr8k(tmp_path)
    lines = [line for line in token_lines(CAPTIONS) if not line.startswith("1000_aaa.jpg#4")]
    lines = [line for line in lines if not line.startswith("1000_aaa.jpg#3")]
    write_text(root / "Flickr8k.token.txt", lines)
    with pytest.raises(DatasetError, match=r"1000_aaa\.jpg \(3\)") as error:
        load8k(root)
    assert "Flickr_8k.trainImages.txt" in str(error.value)
    assert "skip_incomplete" in str(error.value)


def test_fewer_than_five_captions_skipped_with_skip_incomplete(tmp_path: Path) -> None:
    root = write_flickr8k(tmp_path)
    lines = [line for line in token_lines(CAPTIONS) if not line.startswith("1000_aaa.jpg#4")]
    write_text(root / "Flickr8k.token.txt", lines)
    data = load8k(root, skip_incomplete=True)
    assert data.image_ids == ["1002_ccc.jpg"]
    assert data.captions == CAPTIONS["1002_ccc.jpg"]
    assert data.skipped == {"images_too_few_captions": 1}


def test_empty_captions_do_not_count(tmp_path: Path) -> None:
    root = write_flickr8k(tmp_path)
    lines = token_lines(CAPTIONS)
    lines[lines.index(f"1000_aaa.jpg#2\t{CAPTIONS['1000_aaa.jpg'][2]}")] = "1000_aaa.jpg#2\t  "
    write_text(root / "Flickr8k.token.txt", lines)
    with pytest.raises(DatasetError, match=r"1000_aaa\.jpg \(4\)"):
        load8k(root)
    data = load8k(root, skip_incomplete=True)
    assert data.skipped == {"captions_empty": 1, "images_too_few_captions": 1}


def test_split_image_without_captions_error_or_skip(tmp_path: Path) -> None:
    root = write_flickr8k(tmp_path)
    write_jpeg(root / "Flicker8k_Dataset" / "9999_new.jpg")
    write_text(root / FLICKR8K_SPLIT_FILES["train"], [*SPLITS["train"], "9999_new.jpg"])
    with pytest.raises(DatasetError, match=r"9999_new\.jpg \(0\)"):
        load8k(root)
    data = load8k(root, skip_incomplete=True)
    assert data.image_ids == SPLITS["train"]
    assert data.skipped == {"images_without_captions": 1}


@pytest.mark.parametrize(
    ("bad_line", "complaint"),
    [
        ("1000_aaa.jpg#0 a caption after a space, not a tab", "no tab"),
        ("1000_aaa.jpg\ta caption without #N", "IMAGE#N"),
        ("1000_aaa.jpg#x\ta caption with a bad #N", "IMAGE#N"),
    ],
)
def test_malformed_token_line_names_file_and_line(
    tmp_path: Path, bad_line: str, complaint: str
) -> None:
    root = write_flickr8k(tmp_path)
    lines = token_lines(CAPTIONS)
    lines.insert(2, bad_line)  # line 3 of the file
    token = write_text(root / "Flickr8k.token.txt", lines, newline="\r\n")
    with pytest.raises(DatasetError, match=complaint) as error:
        load8k(root)
    assert f"{token}:3:" in str(error.value)


def test_duplicate_names_in_split_file_keep_first(tmp_path: Path) -> None:
    root = write_flickr8k(tmp_path)
    write_text(
        root / FLICKR8K_SPLIT_FILES["train"],
        ["1002_ccc.jpg", "1000_aaa.jpg", "1002_ccc", "1000_aaa.jpg"],
    )
    data = load8k(root)
    assert data.image_ids == SPLITS["train"]
    assert len(data.captions) == 10
    assert data.skipped == {"split_duplicates": 2}


def test_empty_split_file_is_an_error_naming_it(tmp_path: Path) -> None:
    root = write_flickr8k(tmp_path)
    split = write_text(root / FLICKR8K_SPLIT_FILES["train"], ["", "  "], newline="\r\n")
    with pytest.raises(DatasetError, match="names no images") as error:
        load8k(root)
    assert str(split) in str(error.value)


def test_split_empty_after_skipping_is_an_error_naming_it(tmp_path: Path) -> None:
    root = write_flickr8k(tmp_path)
    split = write_text(root / FLICKR8K_SPLIT_FILES["train"], ["nothing_here.jpg"])
    with pytest.raises(DatasetError, match="split is empty") as error:
        load8k(root, skip_incomplete=True)
    assert str(split) in str(error.value)
    assert "images_without_captions=1" in str(error.value)


# --- images on disk ---------------------------------------------------------------------


def test_missing_images_are_reported_at_load_time(tmp_path: Path) -> None:
    captions = {f"{i:04d}_img.jpg": [f"caption {i} {j}" for j in range(5)] for i in range(8)}
    root = write_flickr8k(tmp_path, captions)
    write_text(root / FLICKR8K_SPLIT_FILES["train"], list(captions))
    gone = list(captions)[1:8]
    for name in gone:
        (root / "Flicker8k_Dataset" / name).unlink()
    with pytest.raises(MissingImagesError) as error:
        load8k(root)
    message = str(error.value)
    assert "7 of 8 images" in message
    assert "Flickr_8k.trainImages.txt" in message
    assert all(name in message for name in gone[:5])
    assert gone[5] not in message and "and 2 more" in message  # the first few, not all
    assert error.value.missing == gone
    assert isinstance(error.value, FileNotFoundError)


def test_missing_images_skipped_with_skip_incomplete(tmp_path: Path) -> None:
    root = write_flickr8k(tmp_path)
    (root / "Flicker8k_Dataset" / "1002_ccc.jpg").unlink()
    data = load8k(root, skip_incomplete=True)
    assert data.image_ids == ["1000_aaa.jpg"]
    assert data.captions == CAPTIONS["1000_aaa.jpg"]
    assert data.skipped == {"images_missing_file": 1}


def test_empty_files_count_as_present(tmp_path: Path) -> None:
    root = write_flickr8k(tmp_path)
    (root / "Flicker8k_Dataset" / "1002_ccc.jpg").write_bytes(b"")
    assert load8k(root).image_ids == SPLITS["train"]  # existence only; decoding is later


def test_missing_images_folder_is_an_error(tmp_path: Path) -> None:
    root = write_flickr8k(tmp_path)
    with pytest.raises(FileNotFoundError, match="images folder"):
        load_split(tmp_path / "nope", root / "Flickr8k.token.txt", "train")


def test_check_files_false_skips_the_disk(tmp_path: Path) -> None:
    root = write_flickr8k(tmp_path)
    data = load_split(tmp_path / "nope", root / "Flickr8k.token.txt", "train", check_files=False)
    assert data.image_ids == SPLITS["train"]
    assert data.image_paths[0] == (tmp_path / "nope" / "1002_ccc.jpg").absolute()


# --- Karpathy JSON specifics --------------------------------------------------------------


def test_karpathy_more_sentences_bom_tokens_and_dev_alias(tmp_path: Path) -> None:
    seven = [f"sentence {i} " for i in range(7)]
    images = [karpathy_image("a.jpg", "val", seven), karpathy_image("b.jpg", "val", seven[:5])]
    images[1]["sentences"][0] = {"tokens": ["only", "tokens"]}  # no "raw"
    json_path = write_karpathy(tmp_path, images)
    json_path.write_bytes(b"\xef\xbb\xbf" + json_path.read_bytes())
    data = load_split(tmp_path / "images", json_path, "dev")
    assert data.name == "val"
    assert data.captions_of(0) == [text.strip() for text in seven[:5]]
    assert data.captions_of(1)[0] == "only tokens"
    assert data.skipped == {"captions_beyond_limit": 2}


def test_karpathy_fewer_sentences_error_or_skip(tmp_path: Path) -> None:
    images = [
        karpathy_image("a.jpg", "test", ["x"] * 4),
        karpathy_image("b.jpg", "test", CAPTIONS["1000_aaa.jpg"]),
    ]
    json_path = write_karpathy(tmp_path, images)
    with pytest.raises(DatasetError, match=r"a\.jpg \(4\)") as error:
        load_split(tmp_path / "images", json_path, "test")
    assert json_path.name in str(error.value)
    data = load_split(tmp_path / "images", json_path, "test", skip_incomplete=True)
    assert data.image_ids == ["b.jpg"]


def test_karpathy_with_a_split_file_uses_its_order(tmp_path: Path) -> None:
    json_path = karpathy_like_splits(tmp_path)
    split = write_text(tmp_path / "Flickr_8k.trainImages.txt", ["1000_aaa", "1002_ccc.jpg"])
    data = load_split(tmp_path / "images", json_path, split)
    assert data.name == "train"
    assert data.image_ids == ["1000_aaa.jpg", "1002_ccc.jpg"]
    assert data.captions == CAPTIONS["1000_aaa.jpg"] + CAPTIONS["1002_ccc.jpg"]
    assert data.ignored == {"images_not_in_split": 2}


def test_karpathy_split_file_duplicates_and_unknown_names(tmp_path: Path) -> None:
    images = [
        karpathy_image("x.jpg", "val", CAPTIONS["1000_aaa.jpg"], "val2014"),
        karpathy_image("y.jpg", "val", CAPTIONS["1001_bbb.jpg"], "val2014"),
    ]
    json_path = write_karpathy(tmp_path, images, dataset="coco")
    split = write_text(tmp_path / "mine.txt", ["val2014/x.jpg", "x", "not_in_json.jpg"])
    with pytest.raises(DatasetError, match=r"not_in_json\.jpg \(0\)"):
        load_split(tmp_path / "images", json_path, split)
    data = load_split(tmp_path / "images", json_path, split, skip_incomplete=True)
    assert data.name == "mine"
    assert data.image_ids == ["val2014/x.jpg"]
    assert data.skipped == {"split_duplicates": 1, "images_without_captions": 1}
    assert data.ignored == {"images_not_in_split": 1}


def test_karpathy_invalid_json_names_file_and_line(tmp_path: Path) -> None:
    path = write_text(tmp_path / "dataset_flickr8k.json", ['{"images": [', "  {,", "]}"])
    with pytest.raises(DatasetError, match=r"dataset_flickr8k\.json:2: not valid JSON"):
        load_split(tmp_path, path, "train")


@pytest.mark.parametrize(
    ("broken", "complaint"),
    [
        ({"filename": None}, r"images\[1\] has no 'filename'"),
        ({"split": None}, r"images\[1\] has no 'split'"),
        ({"sentences": None}, r"images\[1\] has no 'sentences'"),
        ({"sentences": [{"raw": None}]}, r"images\[1\]\.sentences\[0\] has neither"),
    ],
)
def test_karpathy_bad_entry_names_image_and_field(
    tmp_path: Path, broken: dict[str, Any], complaint: str
) -> None:
    images = [karpathy_image(f"{i}.jpg", "train", CAPTIONS["1000_aaa.jpg"]) for i in range(2)]
    json_path = write_karpathy(tmp_path, images)
    document = json.loads(json_path.read_text(encoding="utf-8"))
    document["images"][1].update(broken)
    json_path.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(DatasetError, match=complaint) as error:
        load_split(tmp_path / "images", json_path, "train")
    assert str(json_path) in str(error.value)


def test_karpathy_without_images_list(tmp_path: Path) -> None:
    path = tmp_path / "dataset_coco.json"
    path.write_text('{"dataset": "coco"}', encoding="utf-8")
    with pytest.raises(DatasetError, match="'images' list"):
        load_split(tmp_path, path, "train")


# --- dispatch, options, the result type ---------------------------------------------------


def test_split_names_find_the_usual_flickr_split_files(tmp_path: Path) -> None:
    r8 = write_flickr8k(tmp_path / "f8k")
    for split in ("train", "dev", "val", "test"):
        data = load_split(r8 / "Flicker8k_Dataset", r8 / "Flickr8k.token.txt", split)
        assert data.image_ids == SPLITS["val" if split == "dev" else split]
    with pytest.raises(FileNotFoundError, match="restval"):
        load_split(r8 / "Flicker8k_Dataset", r8 / "Flickr8k.token.txt", "restval")


def test_dataset_names_and_bad_arguments(tmp_path: Path) -> None:
    root = write_flickr8k(tmp_path / "f8k")
    json_path = karpathy_like_splits(tmp_path / "kj")
    token = root / "Flickr8k.token.txt"
    assert load8k(root, dataset="flickr8k").image_ids == SPLITS["train"]
    # A Karpathy JSON is read as such even when named by its dataset.
    json_data = load_split(tmp_path / "kj" / "images", json_path, "train", dataset="flickr8k")
    assert json_data.image_ids == SPLITS["train"]
    with pytest.raises(ValueError, match="dataset='mscoco'"):
        load_split(root, token, "train", dataset="mscoco")
    with pytest.raises(ValueError, match="captions_per_image=0"):
        load_split(root, token, "train", captions_per_image=0)
    with pytest.raises(FileNotFoundError, match="captions file"):
        load_split(root, root / "missing.token.txt", "train")
    with pytest.raises(FileNotFoundError, match="neither a split name"):
        load_split(tmp_path / "kj" / "images", json_path, "training")
    with pytest.raises(FileNotFoundError, match="split file"):
        load_split(root, token, root / "no_such_split.txt")


def test_other_captions_per_image(tmp_path: Path) -> None:
    root = write_flickr8k(tmp_path)
    data = load8k(root, captions_per_image=3)
    assert data.captions_per_image == 3
    assert data.captions == [t for name in SPLITS["train"] for t in CAPTIONS[name][:3]]
    assert data.captions_of(1) == CAPTIONS["1000_aaa.jpg"][:3]


def test_one_info_summary_per_load(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = write_flickr8k(tmp_path)
    (root / "Flicker8k_Dataset" / "1002_ccc.jpg").unlink()
    with caplog.at_level(logging.INFO, logger="vsepp.datasets"):
        data = load8k(root, skip_incomplete=True)
    records = [r for r in caplog.records if r.name.startswith("vsepp.datasets")]
    assert len(records) == 1 and records[0].levelno == logging.INFO
    message = records[0].getMessage()
    assert "1 images, 5 captions" in message
    assert "images_missing_file=1 (e.g. 1002_ccc.jpg)" in message
    assert "token_lines_not_in_split=10" in message
    assert data.describe() == (
        "train: 1 images, 5 captions; skipped: images_missing_file=1; "
        "ignored: token_lines_not_in_split=10"
    )


def test_splitdata_checks_its_lengths() -> None:
    with pytest.raises(ValueError, match="4 captions for 1 images x 5"):
        SplitData("x", ["a.jpg"], [Path("/a.jpg")], ["c"] * 4)
    with pytest.raises(ValueError, match="image_paths"):
        SplitData("x", ["a.jpg"], [], ["c"] * 5)
    assert SplitData("x", ["a.jpg"], [Path("/a.jpg")], ["c"] * 5).skipped == {}
