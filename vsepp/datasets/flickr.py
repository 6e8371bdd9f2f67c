"""Flickr8k and Flickr30k seed layouts: a token file and split files of image names."""

from __future__ import annotations

import os
import re
from pathlib import Path

from vsepp.datasets.core import (
    IGNORE_BLANK,
    IGNORE_TOKEN_LINES,
    SKIP_DUPLICATE,
    SKIP_EMPTY_CAPTION,
    DatasetError,
    SplitData,
    Tally,
    assemble,
    image_file_name,
    image_key,
    read_lines,
)

# The part before the tab: "NAME#N". Greedy so a '#' inside the name stays in the name.
_TOKEN_KEY = re.compile(r"(?P<name>.+)#(?P<number>\d+)")


def read_split_file(path: Path, tally: Tally) -> list[str]:
    """Image names of a split file in file order; a repeated name keeps its first place."""
    names: list[str] = []
    seen: set[str] = set()
    for _, line in read_lines(path):
        name = line.strip()
        if not name:
            tally.ignore(IGNORE_BLANK)
            continue
        key = image_key(name)
        if key in seen:
            tally.skip(SKIP_DUPLICATE, name)
            continue
        seen.add(key)
        names.append(name)
    return names


def read_token_file(path: Path, wanted: dict[str, list[str]], tally: Tally) -> None:
    """Append to `wanted[image_key]` the captions of `path` (`NAME#N<TAB>caption` lines).

    Captions keep file order; the `#N` number is checked for form but not used, because
    real files repeat or skip numbers.
    """
    for number, line in read_lines(path):
        if not line.strip():
            tally.ignore(IGNORE_BLANK)
            continue
        head, tab, caption = line.partition("\t")
        if not tab:
            raise DatasetError(
                f"{path}:{number}: expected 'IMAGE#N<TAB>caption', found no tab in {line[:80]!r}"
            )
        match = _TOKEN_KEY.fullmatch(head.strip())
        if match is None:
            raise DatasetError(
                f"{path}:{number}: expected 'IMAGE#N' before the tab, found {head[:80]!r}"
            )
        captions = wanted.get(image_key(match["name"]))
        if captions is None:
            tally.ignore(IGNORE_TOKEN_LINES)
            continue
        caption = caption.strip()
        if not caption:
            tally.skip(SKIP_EMPTY_CAPTION, f"{path.name}:{number}")
            continue
        captions.append(caption)


def load_flickr(
    images_path: str | os.PathLike[str],
    token_path: Path,
    split_path: Path,
    name: str,
    *,
    captions_per_image: int,
    skip_incomplete: bool,
    check_files: bool,
) -> SplitData:
    """The images of `split_path`, in its order, with their captions from `token_path`."""
    tally = Tally()
    names = read_split_file(split_path, tally)
    captions: dict[str, list[str]] = {image_key(image): [] for image in names}
    read_token_file(token_path, captions, tally)
    candidates = [(image_file_name(image), captions[image_key(image)]) for image in names]
    return assemble(
        name,
        candidates,
        images_path=images_path,
        split_source=str(split_path),
        captions_source=token_path,
        captions_per_image=captions_per_image,
        skip_incomplete=skip_incomplete,
        check_files=check_files,
        tally=tally,
    )
