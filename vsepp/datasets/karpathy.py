"""Karpathy split JSON (`dataset_flickr8k.json`, `dataset_flickr30k.json`, `dataset_coco.json`)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from vsepp.datasets.core import (
    IGNORE_JSON_IMAGES,
    SKIP_DUPLICATE,
    SKIP_EMPTY_CAPTION,
    DatasetError,
    SplitData,
    Tally,
    assemble,
    image_file_name,
    image_key,
)
from vsepp.datasets.flickr import read_split_file

logger = logging.getLogger(__name__)


def read_karpathy(path: Path) -> dict[str, Any]:
    """The parsed JSON document, checked to hold an `images` list."""
    data = path.read_bytes()
    try:
        document = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DatasetError(f"{path}:{line}: not valid UTF-8 ({e.reason})") from e
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}:{e.lineno}: not valid JSON: {e.msg} (column {e.colno})") from e
    if not isinstance(document, dict) or not isinstance(document.get("images"), list):
        raise DatasetError(
            f"{path}: expected a Karpathy split file, an object with an 'images' list"
        )
    return document


def _entry(images: list[Any], index: int, path: Path) -> dict[str, Any]:
    entry = images[index]
    if not isinstance(entry, dict):
        raise DatasetError(f"{path}: images[{index}] is a {type(entry).__name__}, not an object")
    return entry


def _image_id(entry: dict[str, Any], index: int, path: Path) -> str:
    """`filename`, under `filepath` when there is one (COCO: "val2014/COCO_val2014_….jpg")."""
    filename = entry.get("filename")
    if not isinstance(filename, str) or not filename.strip():
        raise DatasetError(f"{path}: images[{index}] has no 'filename' (a non-empty string)")
    filepath = entry.get("filepath")
    if filepath in (None, ""):
        return filename.strip()
    if not isinstance(filepath, str):
        raise DatasetError(f"{path}: images[{index}] has a 'filepath' that is not a string")
    return f"{filepath.strip().strip('/')}/{filename.strip()}"


def _captions(entry: dict[str, Any], index: int, path: Path, tally: Tally) -> list[str]:
    """The `raw` text of each sentence in file order (joined `tokens` where `raw` is absent)."""
    sentences = entry.get("sentences")
    if not isinstance(sentences, list):
        raise DatasetError(f"{path}: images[{index}] has no 'sentences' list")
    captions: list[str] = []
    for number, sentence in enumerate(sentences):
        where = f"images[{index}].sentences[{number}]"
        raw = sentence.get("raw") if isinstance(sentence, dict) else None
        tokens = sentence.get("tokens") if isinstance(sentence, dict) else None
        if isinstance(raw, str):
            text = raw.strip()
        elif isinstance(tokens, list) and all(isinstance(token, str) for token in tokens):
            text = " ".join(tokens).strip()
        else:
            raise DatasetError(f"{path}: {where} has neither 'raw' text nor a 'tokens' list")
        if not text:
            tally.skip(SKIP_EMPTY_CAPTION, where)
            continue
        captions.append(text)
    return captions


def _by_split_name(
    images: list[Any], splits: set[str], path: Path, tally: Tally
) -> list[tuple[str, list[str]]]:
    candidates: list[tuple[str, list[str]]] = []
    seen: set[str] = set()
    for index in range(len(images)):
        entry = _entry(images, index, path)
        split = entry.get("split")
        if not isinstance(split, str):
            raise DatasetError(f"{path}: images[{index}] has no 'split' (a string)")
        if split not in splits:
            tally.ignore(IGNORE_JSON_IMAGES)
            continue
        image_id = _image_id(entry, index, path)
        if image_id in seen:
            tally.skip(SKIP_DUPLICATE, image_id)
            continue
        seen.add(image_id)
        candidates.append((image_id, _captions(entry, index, path, tally)))
    return candidates


def _by_split_file(
    images: list[Any], split_path: Path, path: Path, tally: Tally
) -> list[tuple[str, list[str]]]:
    # Split files list bare file names (or ids without .jpg), so match on the file name as
    # well as on the full id with its COCO folder.
    index_of: dict[str, int] = {}
    for index in range(len(images)):
        entry = _entry(images, index, path)
        image_id = _image_id(entry, index, path)
        index_of.setdefault(image_key(image_id), index)
        index_of.setdefault(image_key(image_id.rsplit("/", 1)[-1]), index)
    candidates: list[tuple[str, list[str]]] = []
    used: set[int] = set()
    for name in read_split_file(split_path, tally):
        found = index_of.get(image_key(name))
        if found is None:
            candidates.append((image_file_name(name), []))  # reported as "no captions"
            continue
        entry = images[found]
        image_id = _image_id(entry, found, path)
        if found in used:  # e.g. "val2014/x.jpg" and "x.jpg" in one split file
            tally.skip(SKIP_DUPLICATE, name)
            continue
        used.add(found)
        candidates.append((image_id, _captions(entry, found, path, tally)))
    tally.ignore(IGNORE_JSON_IMAGES, len(images) - len(used))
    return candidates


def load_karpathy(
    images_path: str | os.PathLike[str],
    json_path: Path,
    split: str | Path,
    name: str,
    *,
    dataset: str,
    captions_per_image: int,
    skip_incomplete: bool,
    fold_restval: bool,
    check_files: bool,
) -> SplitData:
    """The images of one split, in JSON order, or of a split file, in its order.

    `split` is a split name ("train", "val", "test", "restval") or a `Path` to a split file
    of image names; `name` becomes SplitData.name. With `fold_restval`, "train" also takes
    the "restval" images.
    """
    document = read_karpathy(json_path)
    declared = document.get("dataset")
    if dataset not in ("auto", "karpathy") and isinstance(declared, str) and declared != dataset:
        logger.warning("%s says dataset %r, loading it as %r", json_path, declared, dataset)
    images: list[Any] = document["images"]
    tally = Tally()
    if isinstance(split, Path):
        source = f"{split} (captions from {json_path})"
        candidates = _by_split_file(images, split, json_path, tally)
    else:
        splits = {"train", "restval"} if split == "train" and fold_restval else {split}
        source = f"{json_path} split {' + '.join(sorted(splits, key=len))}"
        candidates = _by_split_name(images, splits, json_path, tally)
    return assemble(
        name,
        candidates,
        images_path=images_path,
        split_source=source,
        captions_source=json_path,
        captions_per_image=captions_per_image,
        skip_incomplete=skip_incomplete,
        check_files=check_files,
        tally=tally,
    )
