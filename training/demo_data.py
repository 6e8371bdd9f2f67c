"""The built-in synthetic demo dataset, written in the Flickr8k layout.

    python -m training.demo_data --out data/demo [--train N --val N --test N --seed S
                                                 --image_size PX --force]

writes DIR/Flicker8k_Dataset/*.jpg, DIR/Flickr8k.token.txt, the three Flickr_8k split
files and DIR/scenes.json (each image's scene and captions), so the Flickr8k reader serves
it unchanged. Scenes and captions come from `training.demo_scenes`.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import random
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from training.demo_scenes import Scene, SceneObject, make_captions, sample_scenes
from vsepp.atomic import atomic_directory
from vsepp.cli import add_log_level, program, setup_logging

logger = logging.getLogger(__name__)

IMAGES_DIR = "Flicker8k_Dataset"  # sic: the real archive's spelling
TOKEN_FILE = "Flickr8k.token.txt"
SPLIT_FILES = {
    "train": "Flickr_8k.trainImages.txt",
    "val": "Flickr_8k.devImages.txt",
    "test": "Flickr_8k.testImages.txt",
}
SCENES_FILE = "scenes.json"
SCENES_FORMAT = "vsepp-demo/1"
SPLITS = tuple(SPLIT_FILES)
CAPTIONS_PER_IMAGE = 5
SUPERSAMPLE = 4  # draw at 4x and shrink, for smooth edges without an anti-aliasing library
BACKGROUND = 30  # dark grey: every palette colour stands out against it
NOISE_STD = 3.0  # light pixel noise, so images are not flat JPEG blocks


@dataclass(frozen=True)
class DemoConfig:
    """What to generate; the same config gives the same bytes."""

    train: int = 6000  # training images
    val: int = 500  # validation images (the Flickr "dev" split)
    test: int = 1000  # test images: 1,000 images / 5,000 captions as in the Flickr protocol
    seed: int = 0  # random seed (non-negative)
    image_size: int = 64  # side of the square images, pixels
    edit_fraction: float = 0.3  # share of scenes made as one-attribute edits (hard negatives)
    object_weights: tuple[float, float, float] = (0.08, 0.42, 0.5)  # odds of 1, 2, 3 objects
    jpeg_quality: int = 92  # JPEG quality; chroma is kept at full resolution

    def __post_init__(self) -> None:
        for split in SPLITS:
            if getattr(self, split) < 0:
                raise ValueError(f"DemoConfig.{split} must be >= 0, got {getattr(self, split)}")
        if self.seed < 0:
            raise ValueError(f"DemoConfig.seed must be >= 0, got {self.seed}")
        if not 32 <= self.image_size <= 1024:
            raise ValueError(f"DemoConfig.image_size must be in 32..1024, got {self.image_size}")
        if not 0.0 <= self.edit_fraction <= 1.0:
            raise ValueError(f"DemoConfig.edit_fraction must be in [0, 1]: {self.edit_fraction}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"DemoConfig.jpeg_quality must be in 1..100: {self.jpeg_quality}")

    def count(self, split: str) -> int:
        return int(getattr(self, split))


@dataclass(frozen=True)
class DemoImage:
    """One generated image before drawing: its file name, split, scene and captions."""

    name: str  # file name, e.g. "demo_test_00042.jpg"
    split: str  # "train", "val" or "test"
    index: int  # position in its split
    scene: Scene
    captions: tuple[str, ...]

    def record(self, names: Sequence[str]) -> dict[str, Any]:
        """The JSON record of scenes.json; `names` maps split indices to file names."""
        scene = self.scene
        return {
            "image": self.name,
            "split": self.split,
            "layout": scene.layout,
            "objects": [_object_record(o) for o in scene.objects],
            "canonical": scene.canonical(),
            "edit_of": None if scene.edit_of is None else names[scene.edit_of],
            "edit": scene.edit,
            "captions": list(self.captions),
        }


def _object_record(obj: SceneObject) -> dict[str, Any]:
    return {
        "shape": obj.shape,
        "colour": obj.colour,
        "size": obj.size,
        "rgb": list(obj.rgb),
        "center": list(obj.center),
        "extent": obj.extent,
        "bbox": [round(v, 2) for v in obj.bbox],
    }


@dataclass(frozen=True)
class DemoSummary:
    """What `generate` wrote."""

    out_dir: Path
    images: dict[str, int]  # images per split
    captions: int  # caption lines in the token file
    unique_fraction: dict[str, float]  # per split: share of images with a unique description
    vocabulary_size: int  # distinct caption words over all splits
    rarest_train_count: int  # count in training captions of the rarest word (0: word unseen)
    seconds: float = field(default=0.0)  # wall time of the generation

    def lines(self) -> list[str]:
        """A human-readable summary, one fact per line."""
        splits = ", ".join(f"{s} {n}" for s, n in self.images.items())
        unique = ", ".join(f"{s} {f:.3f}" for s, f in self.unique_fraction.items())
        return [
            f"demo dataset written to {self.out_dir}",
            f"images: {splits} ({self.captions} captions)",
            f"unique canonical descriptions: {unique}",
            f"vocabulary: {self.vocabulary_size} words, rarest in train x{self.rarest_train_count}",
            f"took {self.seconds:.1f} s",
        ]


def image_name(split: str, index: int) -> str:
    return f"demo_{split}_{index:05d}.jpg"


def _split_rng(config: DemoConfig, split: str) -> random.Random:
    # A string seed is hashed with SHA-512, so it is stable across runs and PYTHONHASHSEED.
    return random.Random(f"vsepp-demo/{config.seed}/{split}")


def generate_split(config: DemoConfig, split: str) -> list[DemoImage]:
    """Scenes and captions of one split (no pixels); each split has its own random stream."""
    if split not in SPLIT_FILES:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    rng = _split_rng(config, split)
    scenes = sample_scenes(
        config.count(split),
        rng,
        config.image_size,
        edit_fraction=config.edit_fraction,
        object_weights=config.object_weights,
    )
    return [
        DemoImage(image_name(split, i), split, i, scene, tuple(make_captions(scene, rng)))
        for i, scene in enumerate(scenes)
    ]


def unique_fraction(images: Sequence[DemoImage]) -> float:
    """Share of `images` whose canonical scene description no other image in them has."""
    if not images:
        return 1.0
    counts = Counter(im.scene.canonical() for im in images)
    return sum(counts[im.scene.canonical()] == 1 for im in images) / len(images)


def caption_words(caption: str) -> list[str]:
    """Lower-case words of a caption (the demo captions hold nothing but letters and spaces)."""
    return re.findall(r"[a-z]+", caption.lower())


def _draw(draw: ImageDraw.ImageDraw, obj: SceneObject, scale: float) -> None:
    cx, cy = obj.center[0] * scale, obj.center[1] * scale
    h = obj.extent * scale / 2
    fill = obj.rgb
    if obj.shape == "circle":
        draw.ellipse((cx - h, cy - h, cx + h, cy + h), fill=fill)
    elif obj.shape == "square":
        draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)], fill=fill)
    elif obj.shape == "diamond":
        draw.polygon([(cx, cy - h), (cx + h, cy), (cx, cy + h), (cx - h, cy)], fill=fill)
    elif obj.shape == "cross":
        w = h / 3  # arms a third of the side wide: still 3 px for a small cross at 64 px
        draw.rectangle((cx - h, cy - w, cx + h, cy + w), fill=fill)
        draw.rectangle((cx - w, cy - h, cx + w, cy + h), fill=fill)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}")


def render_image(image: DemoImage, config: DemoConfig) -> bytes:
    """The JPEG bytes of one image; deterministic in (config.seed, split, index)."""
    rng = np.random.default_rng([config.seed, SPLITS.index(image.split), image.index])
    size = config.image_size
    big = size * SUPERSAMPLE
    grey = BACKGROUND + int(rng.integers(-6, 7))
    canvas = Image.new("RGB", (big, big), (grey, grey, grey))
    draw = ImageDraw.Draw(canvas)
    for obj in image.scene.objects:
        _draw(draw, obj, SUPERSAMPLE)
    small = canvas.resize((size, size), Image.Resampling.BOX)
    pixels = np.asarray(small, dtype=np.float32) + rng.normal(0.0, NOISE_STD, (size, size, 3))
    out = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")
    buf = io.BytesIO()
    # 4:4:4 chroma: the default 4:2:0 would smear the colour of a 9-px object into its border.
    out.save(buf, "JPEG", quality=config.jpeg_quality, subsampling=0)
    return buf.getvalue()


def _check_out_dir(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise FileExistsError(f"{out_dir} is not empty; pass force=True (--force) to replace it")


def _write(tmp: Path, images: Sequence[DemoImage], config: DemoConfig) -> None:
    images_dir = tmp / IMAGES_DIR
    images_dir.mkdir()
    for k, image in enumerate(images, start=1):
        (images_dir / image.name).write_bytes(render_image(image, config))
        if k % 1000 == 0:
            logger.info("drew %d / %d images", k, len(images))
    with open(tmp / TOKEN_FILE, "w", encoding="utf-8", newline="\n") as f:
        for image in images:
            for n, caption in enumerate(image.captions):
                f.write(f"{image.name}#{n}\t{caption}\n")
    names_by_split = {s: [im.name for im in images if im.split == s] for s in SPLITS}
    for split, file_name in SPLIT_FILES.items():
        lines = "".join(f"{n}\n" for n in names_by_split[split])
        (tmp / file_name).write_text(lines, encoding="utf-8")
    # One image record per line: greppable, and a quarter smaller than an indented dump.
    records = ",\n".join(json.dumps(im.record(names_by_split[im.split])) for im in images)
    head = json.dumps({"format": SCENES_FORMAT, "config": asdict(config)})[:-1]
    (tmp / SCENES_FILE).write_text(f'{head}, "images": [\n{records}\n]}}\n', encoding="utf-8")


def generate(
    out_dir: Path, config: DemoConfig | None = None, *, force: bool = False
) -> DemoSummary:
    """Write the demo dataset to `out_dir` atomically; refuse a non-empty one unless `force`."""
    config = config or DemoConfig()
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, force)
    start = time.perf_counter()
    by_split = {split: generate_split(config, split) for split in SPLITS}
    images = [im for split in SPLITS for im in by_split[split]]
    with atomic_directory(out_dir) as tmp:
        _write(tmp, images, config)
    vocabulary = Counter(w for im in images for c in im.captions for w in caption_words(c))
    train = Counter(w for im in by_split["train"] for c in im.captions for w in caption_words(c))
    summary = DemoSummary(
        out_dir=out_dir,
        images={split: len(by_split[split]) for split in SPLITS},
        captions=CAPTIONS_PER_IMAGE * len(images),
        unique_fraction={split: unique_fraction(by_split[split]) for split in SPLITS},
        vocabulary_size=len(vocabulary),
        rarest_train_count=min((train[w] for w in vocabulary), default=0),
        seconds=time.perf_counter() - start,
    )
    logger.info("wrote %d images to %s in %.1f s", len(images), out_dir, summary.seconds)
    return summary


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    defaults = DemoConfig()
    p = argparse.ArgumentParser(
        prog="python -m training.demo_data",
        description="Write the synthetic demo dataset in the Flickr8k layout.",
    )
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--train", type=int, default=defaults.train, help="training images")
    p.add_argument("--val", type=int, default=defaults.val, help="validation images")
    p.add_argument("--test", type=int, default=defaults.test, help="test images")
    p.add_argument("--seed", type=int, default=defaults.seed, help="random seed")
    p.add_argument("--image_size", type=int, default=defaults.image_size, help="pixels")
    p.add_argument(
        "--edit_fraction",
        type=float,
        default=defaults.edit_fraction,
        help="share of scenes made as single-attribute edits of others (hard negatives)",
    )
    p.add_argument("--force", action="store_true", help="replace a non-empty output directory")
    add_log_level(p)
    return p.parse_args(argv)


@program
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_level)
    config = DemoConfig(
        train=args.train,
        val=args.val,
        test=args.test,
        seed=args.seed,
        image_size=args.image_size,
        edit_fraction=args.edit_fraction,
    )
    summary = generate(args.out, config, force=args.force)
    print("\n".join(summary.lines()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
