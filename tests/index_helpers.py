"""Shared data and stand-ins for the index tests (no model, no TensorFlow)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from index.builder import IndexPolicy, build_index_dir
from index.columnar import write_table
from index.store import MANIFEST, NewCaption, NewImage, load_index
from vsepp.images import ImageFileError

DIM = 16


@contextlib.contextmanager
def faiss_threads(n: int) -> Iterator[None]:
    """Run FAISS on `n` OpenMP threads inside the block.

    The tests use 1: on tiny indexes threads only add OpenMP overhead (a lot of it on a
    busy machine), and an HNSW graph is reproducible only when built on one thread.
    """
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def unit_vectors(n: int, d: int = DIM, seed: int = 0) -> np.ndarray:
    """Seeded random unit vectors, float32 [n, d]."""
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered_vectors(n: int, d: int = DIM, clusters: int = 20, seed: int = 0) -> np.ndarray:
    """Seeded unit vectors around `clusters` centres (an easier, more realistic case)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + 0.35 * rng.standard_normal((n, d)).astype(
        np.float32
    )
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def collection(
    n_images: int, d: int = DIM, seed: int = 0, prefix: str = "img", files: Path | None = None
) -> tuple[np.ndarray, list[NewImage], np.ndarray, list[NewCaption]]:
    """n images with 5 captions each; captions sit near their image. Optional files on disk."""
    images = unit_vectors(n_images, d, seed)
    noise = unit_vectors(5 * n_images, d, seed + 1000)
    captions = np.repeat(images, 5, axis=0) + 0.6 * noise
    records = []
    for i in range(n_images):
        image_id = f"{prefix}{i:04d}.jpg"
        file = None
        if files is not None:
            file = files / image_id
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_bytes(fake_image(image_id))
        records.append(NewImage(image_id, file))
    caps = [
        NewCaption(r.image_id, f"caption {j} of {r.image_id}") for r in records for j in range(5)
    ]
    return images, records, captions.astype(np.float32), caps


def make_index(
    out: Path, n_images: int = 40, *, index_type: str = "flat", seed: int = 0
) -> dict[str, Any]:
    """A small index directory with image files; returns its manifest."""
    files = out.parent / f"{out.name}-src"
    im, records, caps, cap_records = collection(n_images, seed=seed, files=files)
    return build_index_dir(
        out, im, records, caps, cap_records, model_hash="model-a", policy=IndexPolicy(index_type)
    )


def rewrite_json(index_dir: Path, name: str, value: Any) -> None:
    """Replace a metadata file and fix its size in the manifest (a consistent tampering)."""
    path = index_dir / name
    path.write_text(json.dumps(value), encoding="utf-8")
    manifest = json.loads((index_dir / MANIFEST).read_text())
    if name != MANIFEST:
        manifest["files"][name]["bytes"] = path.stat().st_size
        (index_dir / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")


def to_json_format(index_dir: Path) -> None:
    """Rewrite an index directory in place into the format of before "vsepp-index/2"
    (images.json, captions.json, no .arrow files), as an old build left it."""
    loaded = load_index(index_dir)
    images = [r.to_json() for r in loaded.image_records]
    rows = zip(loaded.caption_ids, loaded.caption_image_rows, loaded.captions, strict=True)
    captions = [{"caption_id": c, "image_row": int(r), "text": t} for c, r, t in rows]
    for side in ("images", "captions"):
        (index_dir / f"{side}.arrow").unlink()
    (index_dir / "images.json").write_text(json.dumps(images, ensure_ascii=True))
    (index_dir / "captions.json").write_text(json.dumps(captions))
    manifest = json.loads((index_dir / MANIFEST).read_text())
    manifest["format"] = "vsepp-index/1"
    for name in ("images.arrow", "captions.arrow"):
        del manifest["files"][name]
    for name in ("images.json", "captions.json"):
        manifest["files"][name] = {"bytes": (index_dir / name).stat().st_size}
    (index_dir / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")


def rewrite_arrow(index_dir: Path, name: str, table: pa.Table) -> None:
    """Replace images.arrow or captions.arrow with `table` (lookup columns as they are) and
    fix its size in the manifest (a consistent tampering)."""
    path = index_dir / name
    write_table(path, table)
    manifest = json.loads((index_dir / MANIFEST).read_text())
    manifest["files"][name]["bytes"] = path.stat().st_size
    (index_dir / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")


def leftovers(parent: Path) -> list[str]:
    """Hidden temporary / swapped-out directories an index write may have left in `parent`."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def fake_image(name: str) -> bytes:
    """A real 4x4 PNG that carries `name` in a text chunk, for FakeEncoders to read back."""
    info = PngInfo()
    info.add_text("name", name)
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (90, 120, 150)).save(buffer, "PNG", pnginfo=info)
    return buffer.getvalue()


class FakeEncoders:
    """Deterministic stand-in for `vsepp.model_dir.Encoders`.

    A `fake_image(NAME)` file maps to a vector seeded by NAME; a caption that mentions NAME
    maps near it, so retrieval works. A NAME starting with ``BAD`` fails to decode, as a
    corrupt JPEG body would in TensorFlow's decoder.
    """

    def __init__(self, dim: int = DIM, model_hash: str = "fake-model", out_dim: int | None = None):
        self.embed_dim = dim
        self.model_hash = model_hash
        self.manifest: dict[str, Any] = {"embed_dim": dim}
        self._out_dim = out_dim or dim
        self.image_calls: list[int] = []

    def _vector(self, key: str, noise_key: str = "", scale: float = 0.0) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
        v = np.random.default_rng(seed).standard_normal(self._out_dim)
        if scale:
            nseed = int.from_bytes(hashlib.sha256(noise_key.encode()).digest()[:8], "little")
            v = v + scale * np.random.default_rng(nseed).standard_normal(self._out_dim)
        return (v / np.linalg.norm(v)).astype(np.float32)

    def encode_image_bytes(self, blobs: Sequence[bytes]) -> np.ndarray:
        self.image_calls.append(len(blobs))
        out = []
        for blob in blobs:
            name = str(Image.open(io.BytesIO(blob)).text["name"])  # type: ignore[attr-defined]
            if name.startswith("BAD"):
                raise ImageFileError("corrupt", "the image is truncated or corrupt")
            out.append(self._vector(name))
        return np.stack(out)

    def encode_texts(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        out = []
        for text in texts:
            m = re.search(r"(\S+\.jpg)", text)
            key = m.group(1) if m else text
            out.append(self._vector(key, text, 0.8))
        return np.stack(out) if out else np.zeros((0, self._out_dim), np.float32), np.full(
            len(texts), 3, np.int32
        )


def model_manifest_dir(root: Path, content_hash: str, dim: int) -> Path:
    """A model directory holding only its manifest: all `index.build --from_shards` reads
    of the model (its hash, checked against the shards')."""
    out = root / f"model-{content_hash}"
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"format": "vsepp-model/1", "export": "exports/0001", "embed_dim": dim,
                "content_hash": content_hash, "image": {"image_size": 32}}  # fmt: skip
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out
