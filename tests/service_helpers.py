"""Shared pieces of the service tests: the backend they run against, image makers, servers.

BACKEND picks what the service tests search with:
- "stand_in": a deterministic toy encoder (colour and shape words <-> mean colour and fill
  of the picture) over a real index directory written by index.store and loaded with
  index.store.load_index. Fast, and its answers are predictable.
- "demo": the real model and index of the lead's session fixtures `demo_model_dir` and
  `demo_index_dir` (tests/conftest.py), loaded with vsepp.model_dir / index.store.
Switching is this one line.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

BACKEND = "demo"  # "stand_in": the toy encoder below, for work on the service alone

# --------------------------------------------------------------------------- stand-in model

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (30, 60, 220),
    "yellow": (235, 215, 30),
    "purple": (140, 40, 170),
    "orange": (245, 140, 20),
}
SHAPES = ("square", "circle")
FILLER = ("a", "an", "the", "on", "white", "background", "small", "shape", "picture", "of")
EMBED_DIM = 16
STAND_IN_HASH = "stand-in-model-0001"


def _unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(EMBED_DIM)
    return (v / np.linalg.norm(v)).astype(np.float32)


_RNG = np.random.default_rng(1234)
WORD_VECTORS: dict[str, np.ndarray] = {w: _unit(_RNG) for w in (*COLOURS, *SHAPES, *FILLER)}
WORD_WEIGHTS = {**dict.fromkeys(COLOURS, 1.0), **dict.fromkeys(SHAPES, 0.6)}


def _normalise(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return (v / n).astype(np.float32) if n > 0 else v.astype(np.float32)


class StandInEncoders:
    """Implements the Encoders protocol: words and pictures of coloured shapes.

    A text is the weighted sum of its known words' vectors; an image is the vector of its
    dominant colour plus that of its shape (fill ratio of the non-white box), plus a tiny
    per-picture offset so that no two pictures tie.
    """

    def __init__(self) -> None:
        self.embed_dim = EMBED_DIM
        self.model_hash = STAND_IN_HASH
        self.manifest: dict[str, Any] = {
            "format": "vsepp-model/1",
            "embed_dim": EMBED_DIM,
            "cnn": "stand-in",
            "text": {"vocab_size": 4 + len(WORD_VECTORS)},
            "content_hash": STAND_IN_HASH,
        }

    def encode_texts(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        vectors = np.zeros((len(texts), EMBED_DIM), np.float32)
        known = np.zeros(len(texts), np.int32)
        for i, text in enumerate(texts):
            text.encode("utf-8")  # as TF does: lone surrogates cannot become a tf.string
            for word in re.findall(r"[a-z]+", text.lower()):
                if word in WORD_VECTORS:
                    known[i] += 1
                    vectors[i] += WORD_WEIGHTS.get(word, 0.1) * WORD_VECTORS[word]
            vectors[i] = _normalise(vectors[i])
        return vectors, known

    def encode_image_bytes(self, blobs: Sequence[bytes]) -> np.ndarray:
        arrays = []
        for blob in blobs:
            with Image.open(io.BytesIO(blob)) as image:
                arrays.append(np.asarray(image.convert("RGB")))
        return np.stack([self._encode_one(a, seed=a.tobytes()) for a in arrays])

    def encode_image_arrays(self, images: np.ndarray) -> np.ndarray:
        arr = np.asarray(images)
        if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"expected uint8 images [n, H, W, 3], got {arr.dtype} {arr.shape}")
        return np.stack([self._encode_one(a, seed=a.tobytes()) for a in arr])

    @staticmethod
    def _encode_one(rgb: np.ndarray, seed: bytes) -> np.ndarray:
        pixels = rgb.reshape(-1, 3).astype(np.float32)
        ink = pixels[pixels.min(axis=1) < 200]
        if len(ink) == 0:
            return np.zeros(EMBED_DIM, np.float32)
        mean = ink.mean(axis=0)
        colour = min(COLOURS, key=lambda c: float(np.sum((np.array(COLOURS[c]) - mean) ** 2)))
        mask = rgb.min(axis=2) < 200
        rows, cols = np.nonzero(mask)
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        shape = "square" if mask.sum() / box > 0.9 else "circle"
        jitter = np.frombuffer(hashlib.sha256(seed).digest()[:EMBED_DIM], np.uint8)
        v = WORD_VECTORS[colour] + 0.6 * WORD_VECTORS[shape] + (jitter / 255.0 - 0.5) * 0.02
        return _normalise(v.astype(np.float32))


class CountingEncoders:
    """Wraps any Encoders: counts encode_texts calls and their sizes, can slow them down."""

    def __init__(self, inner: Any, text_delay_s: float = 0.0) -> None:
        self.inner = inner
        self.manifest = inner.manifest
        self.embed_dim = inner.embed_dim
        self.model_hash = inner.model_hash
        self.text_delay_s = text_delay_s
        self.text_batches: list[int] = []
        self._lock = threading.Lock()

    def encode_texts(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            self.text_batches.append(len(texts))
        if self.text_delay_s:
            time.sleep(self.text_delay_s)
        result: tuple[np.ndarray, np.ndarray] = self.inner.encode_texts(texts)
        return result

    def encode_image_bytes(self, blobs: Sequence[bytes]) -> np.ndarray:
        return np.asarray(self.inner.encode_image_bytes(blobs))

    def encode_image_arrays(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self.inner.encode_image_arrays(images))


# --------------------------------------------------------------------------- pictures


def shape_image(colour: str, shape: str, size: int = 64) -> Image.Image:
    """A coloured square or circle on white."""
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    box = (size // 6, size // 6, size - size // 6, size - size // 6)
    if shape == "square":
        draw.rectangle(box, fill=COLOURS[colour])
    else:
        draw.ellipse(box, fill=COLOURS[colour])
    return image


def image_bytes(image: Image.Image, fmt: str, **save: Any) -> bytes:
    """`image` encoded as `fmt` (PIL format name)."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def stand_in_captions(colour: str, shape: str) -> list[str]:
    """Five captions of a coloured shape, as a dataset would have them."""
    return [
        f"a {colour} {shape} on a white background",
        f"a small {colour} {shape}",
        f"{colour} {shape}",
        f"the picture of a {colour} {shape}",
        f"a {shape} shape that is {colour}",
    ]


# --------------------------------------------------------------------------- backends


@dataclass
class ServiceBackend:
    """What the service tests run against."""

    name: str
    encoders: Any
    index: Any
    index_dir: Path
    model_dir: Path | None
    known_query: str  # a query whose words the model knows
    sample_image: Path  # an indexed image file, for uploads
    expected_top_image: str | None = None  # stand-in only: what known_query must find first
    upload_words: tuple[str, ...] = ()  # stand-in only: words the sample's top caption has


def write_stand_in_index(index_dir: Path, images_dir: Path, encoders: Any) -> Path:
    """Draw the pictures and write a flat index directory of them with index.store."""
    import faiss

    from index.store import CaptionRecord, ImageRecord, IndexPart, write_index_dir

    images_dir.mkdir(parents=True, exist_ok=True)
    image_records: list[ImageRecord] = []
    caption_records: list[CaptionRecord] = []
    files: dict[str, Path] = {}
    blobs: list[bytes] = []
    captions: list[str] = []
    for colour in COLOURS:
        for shape in SHAPES:
            image_id = f"shapes/{colour}_{shape}.png"
            path = images_dir / f"{colour}_{shape}.png"
            shape_image(colour, shape).save(path)
            row = len(image_records)
            image_records.append(ImageRecord(image_id=image_id, path=image_id))
            files[image_id] = path
            blobs.append(path.read_bytes())
            for n, text in enumerate(stand_in_captions(colour, shape)):
                caption_records.append(CaptionRecord(f"{image_id}#{n}", row, text))
                captions.append(text)
    image_vectors = encoders.encode_image_bytes(blobs)
    caption_vectors, _ = encoders.encode_texts(captions)

    def flat(vectors: np.ndarray) -> IndexPart:
        index = faiss.IndexFlatIP(EMBED_DIM)
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        return IndexPart(index, {"index_type": "flat", "params": {}})

    write_index_dir(
        index_dir,
        images=flat(image_vectors),
        captions=flat(caption_vectors),
        image_records=image_records,
        caption_records=caption_records,
        model_hash=encoders.model_hash,
        image_files=files,
        source={"split": "stand-in shapes"},
    )
    return index_dir


def stand_in_backend(root: Path) -> ServiceBackend:
    """The toy encoder over a real index directory of 12 coloured shapes."""
    from index.store import load_index

    encoders = StandInEncoders()
    index_dir = write_stand_in_index(root / "index", root / "pictures", encoders)
    index = load_index(index_dir, expected_model_hash=encoders.model_hash)
    sample = index.image_file("shapes/red_square.png")
    assert sample is not None
    return ServiceBackend(
        name="stand_in",
        encoders=encoders,
        index=index,
        index_dir=index_dir,
        model_dir=None,
        known_query="a red square",
        sample_image=sample,
        expected_top_image="shapes/red_square.png",
        upload_words=("red", "square"),
    )


def demo_backend(model_dir: Path, index_dir: Path) -> ServiceBackend:
    """The real exported model and its index."""
    from index.store import load_index
    from vsepp.model_dir import load_encoders

    encoders = load_encoders(model_dir)
    index = load_index(index_dir, expected_model_hash=encoders.model_hash)
    sample = next(
        (p for p in (index.image_file(i) for i in index.image_ids) if p is not None), None
    )
    assert sample is not None, f"{index_dir} holds no image files"
    return ServiceBackend(
        name="demo",
        encoders=encoders,
        index=index,
        index_dir=Path(index_dir),
        model_dir=Path(model_dir),
        known_query=index.captions[0],
        sample_image=sample,
    )


_CACHE: dict[str, ServiceBackend] = {}


def get_backend(request: pytest.FixtureRequest) -> ServiceBackend:
    """The backend BACKEND names, built once per test session."""
    if BACKEND not in _CACHE:
        if BACKEND == "demo":
            _CACHE[BACKEND] = demo_backend(
                request.getfixturevalue("demo_model_dir"),
                request.getfixturevalue("demo_index_dir"),
            )
        elif BACKEND == "stand_in":
            factory: pytest.TempPathFactory = request.getfixturevalue("tmp_path_factory")
            _CACHE[BACKEND] = stand_in_backend(factory.mktemp("service-stand-in"))
        else:
            raise ValueError(f"BACKEND={BACKEND!r}: expected 'stand_in' or 'demo'")
    return _CACHE[BACKEND]


# --------------------------------------------------------------------------- live servers


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def uvicorn_in_thread(app: Any, timeout_s: float = 20.0) -> Iterator[str]:
    """Serve `app` with a real uvicorn on a free 127.0.0.1 port; yields the base URL."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"uvicorn did not start on port {port}")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
