"""Shared parts of the dataset readers: the result type, errors, line reading and assembly."""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vsepp.images import IMAGE_EXTENSIONS

logger = logging.getLogger(__name__)

# How many names an error or log line shows before "and N more".
MAX_EXAMPLES = 5

# Suffixes that make a name a file name already (those of the formats vsepp.images reads);
# anything else gets ".jpg" appended, since Flickr30k split files (and some token files)
# list bare ids.
IMAGE_SUFFIXES = tuple(sorted(IMAGE_EXTENSIONS))

# Reasons in SplitData.skipped: what the split named but the result lacks.
SKIP_MISSING_FILE = "images_missing_file"
SKIP_NO_CAPTIONS = "images_without_captions"
SKIP_TOO_FEW = "images_too_few_captions"
SKIP_DUPLICATE = "split_duplicates"
SKIP_EXTRA_CAPTIONS = "captions_beyond_limit"
SKIP_EMPTY_CAPTION = "captions_empty"

# Reasons in SplitData.ignored: input that belongs to no image of the split.
IGNORE_BLANK = "blank_lines"
IGNORE_TOKEN_LINES = "token_lines_not_in_split"
IGNORE_JSON_IMAGES = "images_not_in_split"


class DatasetError(ValueError):
    """A dataset file's content is unusable; the message names the file (and line)."""


class MissingImagesError(FileNotFoundError):
    """Images named by a split are not on disk; `missing` holds all their ids."""

    def __init__(self, message: str, missing: Sequence[str]) -> None:
        super().__init__(message)
        self.missing = list(missing)


def format_counts(counts: dict[str, int], examples: dict[str, list[str]] | None = None) -> str:
    """`reason=count` pairs sorted by reason (with example names if given), or "none"."""
    parts = []
    for reason in sorted(counts):
        shown = (examples or {}).get(reason)
        suffix = f" (e.g. {', '.join(shown)})" if shown else ""
        parts.append(f"{reason}={counts[reason]}{suffix}")
    return ", ".join(parts) or "none"


@dataclass(frozen=True)
class SplitData:
    """One split: image ids and paths, and `captions_per_image` captions for each image."""

    name: str  # "train", "val", "test" (or the split file's stem)
    image_ids: list[str]  # path relative to the images root, e.g. "val2014/COCO_val2014_….jpg"
    image_paths: list[Path]  # absolute paths, same order as image_ids
    captions: list[str]  # raw text; image i owns rows k*i .. k*i+k-1 (k = captions_per_image)
    captions_per_image: int = 5  # k, the same for every image
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count the split lost
    ignored: dict[str, int] = field(default_factory=dict)  # reason -> count outside the split

    def __post_init__(self) -> None:
        if len(self.image_paths) != len(self.image_ids):
            raise ValueError(
                f"SplitData {self.name!r}: {len(self.image_paths)} image_paths for "
                f"{len(self.image_ids)} image_ids"
            )
        if len(self.captions) != self.captions_per_image * len(self.image_ids):
            raise ValueError(
                f"SplitData {self.name!r}: {len(self.captions)} captions for "
                f"{len(self.image_ids)} images x {self.captions_per_image}"
            )

    def captions_of(self, index: int) -> list[str]:
        """The captions of image `index`, in file order."""
        k = self.captions_per_image
        return self.captions[k * index : k * index + k]

    def describe(self) -> str:
        """One line for logs and manifests: what was read, skipped and ignored."""
        return (
            f"{self.name}: {len(self.image_ids)} images, {len(self.captions)} captions; "
            f"skipped: {format_counts(self.skipped)}; ignored: {format_counts(self.ignored)}"
        )


@dataclass
class Tally:
    """Counts (and a few example names) of what a reader skipped or ignored."""

    skipped: Counter[str] = field(default_factory=Counter)
    ignored: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, example: str | None = None, count: int = 1) -> None:
        """Count `count` things lost for `reason`, remembering the first few examples."""
        self.skipped[reason] += count
        if example is not None:
            shown = self.examples.setdefault(reason, [])
            if len(shown) < MAX_EXAMPLES:
                shown.append(example)

    def ignore(self, reason: str, count: int = 1) -> None:
        """Count input that belongs to no image of the split."""
        self.ignored[reason] += count


def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, text) of a UTF-8 file, ending characters removed.

    Copes with a BOM, CRLF or CR line endings and a last line without a newline.
    """
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DatasetError(f"{path}:{line}: not valid UTF-8 ({e.reason})") from e
    # Not str.splitlines: it also breaks on form feeds and U+2028, which can sit inside a
    # caption and would shift every later line number.
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    yield from enumerate(lines, start=1)


def image_key(name: str) -> str:
    """The name that matches one image across files: stripped, without a `.jpg` suffix."""
    name = name.strip()
    return name[:-4] if name.lower().endswith(".jpg") else name


def image_file_name(name: str) -> str:
    """The file name of an image named with or without `.jpg`."""
    name = name.strip()
    return name if name.lower().endswith(IMAGE_SUFFIXES) else f"{name}.jpg"


def _shown(names: Sequence[str]) -> str:
    head = ", ".join(names[:MAX_EXAMPLES])
    more = len(names) - MAX_EXAMPLES
    return f"{head} and {more} more" if more > 0 else head


def _files_in(folder: Path) -> set[str]:
    # One directory listing per folder instead of a stat per image: far fewer calls on
    # network file systems, where 120k stats of COCO take minutes.
    try:
        with os.scandir(folder) as entries:
            return {entry.name for entry in entries if entry.is_file()}
    except (FileNotFoundError, NotADirectoryError):
        return set()


def _drop_missing(
    images: list[tuple[str, list[str]]],
    root: Path,
    split_source: str,
    skip_incomplete: bool,
    tally: Tally,
) -> list[tuple[str, list[str]]]:
    if not root.is_dir():
        raise FileNotFoundError(f"images folder {root} does not exist (needed by {split_source})")
    listings: dict[Path, set[str]] = {}
    missing: list[str] = []
    present: list[tuple[str, list[str]]] = []
    for image_id, captions in images:
        relative = Path(image_id)
        folder = root / relative.parent
        if folder not in listings:
            listings[folder] = _files_in(folder)
        if relative.name in listings[folder]:
            present.append((image_id, captions))
        else:
            missing.append(image_id)
    if missing and not skip_incomplete:
        raise MissingImagesError(
            f"{split_source}: {len(missing)} of {len(images)} images are not in {root}: "
            f"{_shown(missing)} (check images_path, or pass skip_incomplete=True to skip them)",
            missing,
        )
    for image_id in missing:
        tally.skip(SKIP_MISSING_FILE, image_id)
    return present


def assemble(
    name: str,
    candidates: Sequence[tuple[str, list[str]]],
    *,
    images_path: str | os.PathLike[str],
    split_source: str,
    captions_source: Path,
    captions_per_image: int,
    skip_incomplete: bool,
    check_files: bool,
    tally: Tally,
) -> SplitData:
    """Check (image id, captions) pairs in split order and build the SplitData.

    Images with fewer than `captions_per_image` captions, or missing on disk when
    `check_files`, raise one error listing them, or are skipped and counted when
    `skip_incomplete`. Extra captions are dropped from the end (file order). Logs one INFO
    summary.
    """
    if not candidates:
        raise DatasetError(f"{split_source}: the split names no images")
    k = captions_per_image
    short = [(image_id, len(captions)) for image_id, captions in candidates if len(captions) < k]
    if short and not skip_incomplete:
        listed = _shown([f"{image_id} ({count})" for image_id, count in short])
        raise DatasetError(
            f"{split_source}: {len(short)} images have fewer than {k} captions in "
            f"{captions_source} (count in brackets, 0 = none at all): {listed}; "
            "pass skip_incomplete=True to skip them"
        )
    complete: list[tuple[str, list[str]]] = []
    for image_id, captions in candidates:
        if len(captions) < k:
            reason = SKIP_TOO_FEW if captions else SKIP_NO_CAPTIONS
            tally.skip(reason, f"{image_id} ({len(captions)})")
            continue
        if len(captions) > k:
            tally.skip(SKIP_EXTRA_CAPTIONS, count=len(captions) - k)
        complete.append((image_id, captions[:k]))

    root = Path(images_path).expanduser().absolute()
    if check_files:
        complete = _drop_missing(complete, root, split_source, skip_incomplete, tally)
    if not complete:
        raise DatasetError(
            f"{split_source}: the split is empty: none of its {len(candidates)} images is "
            f"usable (skipped: {format_counts(tally.skipped)})"
        )

    data = SplitData(
        name=name,
        image_ids=[image_id for image_id, _ in complete],
        image_paths=[root / image_id for image_id, _ in complete],
        captions=[caption for _, captions in complete for caption in captions],
        captions_per_image=k,
        skipped=dict(tally.skipped),
        ignored=dict(tally.ignored),
    )
    logger.info(
        "%s: %d images, %d captions from %s; skipped: %s; ignored: %s",
        split_source,
        len(data.image_ids),
        len(data.captions),
        captions_source,
        format_counts(data.skipped, tally.examples),
        format_counts(data.ignored),
    )
    return data
