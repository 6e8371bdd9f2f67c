"""`load_split`: one entry point that picks the reader for a dataset's files."""

from __future__ import annotations

import os
import re
from pathlib import Path

from vsepp.datasets.core import SplitData
from vsepp.datasets.flickr import load_flickr
from vsepp.datasets.karpathy import load_karpathy

DATASETS = ("auto", "flickr8k", "flickr30k", "karpathy", "coco")

# Split names and what SplitData.name calls them: Flickr8k says "dev" where the rest say "val".
_SPLIT_NAMES = {"train": "train", "val": "val", "dev": "val", "test": "test", "restval": "restval"}

# Where a split name finds its file next to a Flickr token file (Flickr8k, then Flickr30k).
_FLICKR_SPLIT_FILES = {
    "train": ("Flickr_8k.trainImages.txt", "train.txt"),
    "val": ("Flickr_8k.devImages.txt", "val.txt"),
    "test": ("Flickr_8k.testImages.txt", "test.txt"),
}

_FLICKR8K_SPLIT_STEM = re.compile(r"flickr_8k\.(train|dev|test)images", re.IGNORECASE)


def _split_name(split_file: Path) -> str:
    """The split name (train, val or test) of a usual split file name, else its stem."""
    stem = split_file.stem
    match = _FLICKR8K_SPLIT_STEM.fullmatch(stem)
    if match is not None:
        return _SPLIT_NAMES[match[1].lower()]
    return _SPLIT_NAMES.get(stem.lower(), stem)


def _is_karpathy(dataset: str, texts: Path) -> bool:
    if dataset in ("karpathy", "coco"):
        return True
    # Karpathy's dataset_flickr8k.json is Flickr8k too, so for the Flickr names and "auto"
    # the file decides.
    return texts.suffix.lower() == ".json"


def _flickr_split_file(split: str, texts: Path) -> Path:
    path = Path(split).expanduser()
    if path.is_file():
        return path
    canonical = _SPLIT_NAMES.get(split.lower())
    if canonical not in _FLICKR_SPLIT_FILES:
        raise FileNotFoundError(f"split file {path} does not exist")
    tried = [texts.parent / candidate for candidate in _FLICKR_SPLIT_FILES[canonical]]
    for candidate in tried:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"split {split!r}: no split file next to {texts} (tried {', '.join(map(str, tried))})"
    )


def load_split(
    images_path: str | os.PathLike[str],
    texts_path: str | os.PathLike[str],
    split: str | os.PathLike[str],
    *,
    dataset: str = "auto",
    captions_per_image: int = 5,
    skip_incomplete: bool = False,
    fold_restval: bool = False,
    check_files: bool = True,
) -> SplitData:
    """Read one split: its images in a stable order with `captions_per_image` captions each.

    `texts_path` is a Flickr token file (`Flickr8k.token.txt`, `results_20130124.token`) or
    a Karpathy JSON; `dataset="auto"` tells them apart by the `.json` suffix. `split` is a
    split file of image names, or a split name (`train`, `val`/`dev`, `test`, and for JSON
    `restval`); for Flickr layouts a name means the usual split file next to `texts_path`.
    Images with too few captions or missing on disk (`check_files`) raise one error that
    lists them, unless `skip_incomplete`, which skips and counts them (`SplitData.skipped`).
    `fold_restval` adds the JSON's "restval" images to "train". Logs one INFO summary.
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset={dataset!r}: expected one of {', '.join(DATASETS)}")
    if captions_per_image < 1:
        raise ValueError(f"captions_per_image={captions_per_image}: must be at least 1")
    texts = Path(texts_path).expanduser()
    if not texts.is_file():
        raise FileNotFoundError(f"captions file {texts} does not exist")
    split_text = os.fspath(split)

    if _is_karpathy(dataset, texts):
        canonical = _SPLIT_NAMES.get(split_text.lower())
        split_arg: str | Path
        if canonical is not None:
            split_arg, name = canonical, canonical
        else:
            split_arg = Path(split_text).expanduser()
            if not split_arg.is_file():
                raise FileNotFoundError(
                    f"split {split_text!r}: neither a split name ({', '.join(_SPLIT_NAMES)}) "
                    "nor an existing split file"
                )
            name = _split_name(split_arg)
        return load_karpathy(
            images_path,
            texts,
            split_arg,
            name,
            dataset=dataset,
            captions_per_image=captions_per_image,
            skip_incomplete=skip_incomplete,
            fold_restval=fold_restval,
            check_files=check_files,
        )

    split_file = _flickr_split_file(split_text, texts)
    return load_flickr(
        images_path,
        texts,
        split_file,
        _split_name(split_file),
        captions_per_image=captions_per_image,
        skip_incomplete=skip_incomplete,
        check_files=check_files,
    )
