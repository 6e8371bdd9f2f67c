"""The model directory: its manifest, its exported encoders, and the interface they offer.

`training.export` writes what this module reads (docs/CONTRACTS.md). Loading needs
TensorFlow only, nothing from `training/`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from vsepp.images import ImageFileError, canonical_image_bytes
from vsepp.precision import bfloat16_function, native_bfloat16, resolve_precision

log = logging.getLogger(__name__)

MODEL_FORMAT = "vsepp-model/1"
# What `load_encoders` is for: "search" (index, serve) or "evaluate" (training.inference).
PURPOSES = ("search", "evaluate")
SEARCHABLE = (
    "only full-image runs with the cosine measure can be indexed and served (the original's "
    "resnet18-152 and vgg16/19 runs without _precomp, VSE0 or VSE++, and this project's own)"
)


class UnsearchableModelError(ValueError):
    """The model can be evaluated but not searched by inner product from image files."""


def search_problem(manifest: dict[str, Any]) -> str | None:
    """Why a model cannot be indexed or served, None when it can."""
    if manifest.get("image", {}).get("input") == "features":
        return (
            "its image side is a projection of the authors' precomputed CNN features (a "
            "*_precomp run), which cannot be computed from image files; evaluate it with "
            "python -m training.inference --precomp_data DIR"
        )
    if manifest.get("measure", "cosine") == "order":
        return (
            "it is an order-embedding model (--measure order), whose score is not an inner "
            "product, so FAISS cannot search it; evaluate it with python -m training.inference"
        )
    return None


class EncodersLike(Protocol):
    """What indexing, evaluation and serving need of a model: `Encoders`, or a test's stand-in."""

    manifest: dict[str, Any]
    embed_dim: int
    model_hash: str

    def encode_texts(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(float32 [n, D] vectors, int32 [n] count of in-vocabulary words)."""
        ...

    def encode_image_bytes(self, blobs: Sequence[bytes]) -> np.ndarray:
        """float32 [n, D] vectors of image files in canonical form (`vsepp.images`)."""
        ...


class Encoders:
    """The exported image and text encoders of one model directory.

    `precision` "bfloat16" runs the image encoder's convolutions and matrix products in
    bfloat16 (`vsepp.precision`); the text encoder, a small share of the work, stays float32.
    The vectors are float32 either way. "auto" is bfloat16 where the CPU computes it natively
    and float32 elsewhere (`vsepp.precision.resolve_precision`); `self.precision` says which.
    """

    def __init__(
        self, model_dir: str | os.PathLike[str], precision: str = "float32", purpose: str = "search"
    ) -> None:
        import tensorflow as tf  # imported here so that reading a manifest stays light

        if purpose not in PURPOSES:
            raise ValueError(f"purpose {purpose!r}: expected one of {PURPOSES}")
        precision = resolve_precision(precision)
        self._tf = tf
        self.precision = precision
        self.model_dir = Path(model_dir)
        self.manifest = read_model_manifest(self.model_dir)
        problem = search_problem(self.manifest)
        if purpose == "search" and problem:
            raise UnsearchableModelError(
                f"model {self.model_dir} cannot be indexed or served: {problem}. {SEARCHABLE}"
            )
        self.takes_features = self.manifest["image"].get("input") == "features"
        export = self.model_dir / self.manifest["export"]
        for part in ("image_encoder", "text_encoder"):
            if not (export / part / "saved_model.pb").is_file():
                raise FileNotFoundError(
                    f"model directory {self.model_dir}: {part} missing in {export}"
                )
        self.embed_dim: int = int(self.manifest["embed_dim"])
        # The content hash names the exact weights: an index built with them records it.
        self.model_hash: str = str(self.manifest["content_hash"])
        self.image_size: int = int(self.manifest["image"]["image_size"])
        self.jpeg_min_side = jpeg_min_side(self.manifest)
        self._image = tf.saved_model.load(str(export / "image_encoder"))
        self._text = tf.saved_model.load(str(export / "text_encoder"))
        if self.takes_features:
            self._encode_features: Any = self._image.encode_features
            return
        self._encode_bytes: Any = self._image.encode_bytes
        self._encode_array: Any = self._image.encode_array
        if precision == "bfloat16":
            if not native_bfloat16():
                log.warning(
                    "this CPU has no AVX512_BF16 or AMX: bfloat16 is emulated here and slower "
                    "than float32"
                )
            self._encode_bytes = bfloat16_function(self._encode_bytes.get_concrete_function())
            self._encode_array = bfloat16_function(self._encode_array.get_concrete_function())

    def encode_texts(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings float32 [n, D], number of in-vocabulary words int32 [n])."""
        if not texts:
            return np.zeros((0, self.embed_dim), np.float32), np.zeros((0,), np.int32)
        out = self._text.encode(self._tf.constant(list(texts), dtype=self._tf.string))
        return out["embedding"].numpy(), out["known_tokens"].numpy()

    def encode_features(self, features: np.ndarray) -> np.ndarray:
        """Embeddings float32 [n, D] of precomputed CNN features [n, F] (a *_precomp model)."""
        if not self.takes_features:
            raise ValueError(f"model {self.model_dir} takes image files, not features")
        arr = np.asarray(features, np.float32)
        return np.asarray(self._encode_features(self._tf.constant(arr)).numpy(), np.float32)

    def encode_image_bytes(self, blobs: Sequence[bytes]) -> np.ndarray:
        """Embeddings float32 [n, D] of image files, each first put in canonical form.

        `vsepp.images.canonical_image_bytes` is applied here, so no caller can bypass it (on
        bytes already canonical it costs a header parse). Raises ImageFileError for a file
        that is no usable image, naming its position when there are several.
        """
        if not blobs:
            return np.zeros((0, self.embed_dim), np.float32)
        canonical = []
        for i, blob in enumerate(blobs):
            try:
                canonical.append(canonical_image_bytes(blob, min_side=self.jpeg_min_side))
            except ImageFileError as e:
                raise ImageFileError(e.reason, _nth(i, len(blobs), str(e))) from e
        try:
            out = self._encode_bytes(self._tf.constant(canonical, dtype=self._tf.string))
        except self._tf.errors.OpError as e:
            message = e.message or str(e)
            invalid = isinstance(e, self._tf.errors.InvalidArgumentError)
            decoder = invalid and _DECODER.search(message)
            if not decoder:
                # Not the file: a graph failure, a missing kernel, out of memory. It stops
                # whatever embeds, and is never filed as a bad image.
                raise EncoderFailure(
                    f"the image encoder failed on {len(blobs)} image(s), not because of the "
                    f"files: {type(e).__name__}: {_first_line(message)}"
                ) from e
            # TensorFlow's decoder found a truncated or corrupt JPEG/PNG body.
            # TensorFlow's message is a traceback; the decoder's own words say what broke.
            lines = [x.strip() for x in message.splitlines()]
            said = [x for x in lines if "Invalid" in x or "failed" in x or "corrupt" in x]
            first = (said or ["the decoder refused it"])[0][:200]
            where = "the image" if len(blobs) == 1 else f"one of the {len(blobs)} images"
            raise ImageFileError("corrupt", f"{where} is truncated or corrupt: {first}") from e
        return np.asarray(out.numpy(), dtype=np.float32)

    def encode_image_arrays(self, images: np.ndarray) -> np.ndarray:
        """Embeddings float32 [n, D] of uint8 RGB images [n, H, W, 3]."""
        arr = np.asarray(images)
        if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"expected uint8 images [n, H, W, 3], got {arr.dtype} {arr.shape}")
        if arr.shape[0] == 0:
            return np.zeros((0, self.embed_dim), np.float32)
        return np.asarray(self._encode_array(self._tf.constant(arr)).numpy(), np.float32)


def jpeg_min_side(manifest: dict[str, Any]) -> int | None:
    """The shorter side the model's decoder downscales large JPEGs to at least, None for a
    model that decodes them at full size (exported before it could); pass it on to
    `vsepp.images` wherever a file is put in canonical form for this model."""
    image = manifest.get("image")
    value = image.get("jpeg_min_side") if isinstance(image, dict) else None
    return int(value) if value else None


def model_facts(encoders: EncodersLike) -> dict[str, Any]:
    """What an index manifest records about the model it was built with."""
    manifest = encoders.manifest
    return {
        "model_hash": encoders.model_hash,
        "embed_dim": encoders.embed_dim,
        "cnn": manifest.get("cnn"),
        "vocab_size": manifest.get("text", {}).get("vocab_size"),
        "image_size": manifest.get("image", {}).get("image_size"),
        "precision": getattr(encoders, "precision", "float32"),
    }


class EncoderFailure(RuntimeError):
    """The encoder itself failed (graph execution, kernel, memory): no file is to blame."""


# The graph nodes whose InvalidArgumentError means "this file's body is corrupt": TF's
# decoders name the failing node in the message ("node map/while/cond/.../DecodeJpeg").
_DECODER = re.compile(
    r"node (?:[^\s\]]*/)?(?:Decode(?:Jpeg|Png|Image|Gif|Bmp|AndCropJpeg)|ExtractJpegShape)\b"
)


def _first_line(message: str) -> str:
    """The first line of a TensorFlow message that says something (not its traceback head)."""
    lines = [x.strip() for x in message.splitlines() if x.strip()]
    said = [x for x in lines if not x.startswith(("Graph execution error", "Detected at", "<"))]
    return (said or lines or ["(no message)"])[0][:300]


def _nth(i: int, n: int, message: str) -> str:
    return message if n == 1 else f"image {i} of {n}: {message}"


def read_model_manifest(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a model directory, with a clear error when it is not one."""
    path = Path(model_dir) / "manifest.json"
    try:
        manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{model_dir} is not a model directory: no manifest.json") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if manifest.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path}: format {manifest.get('format')!r}, expected {MODEL_FORMAT!r}")
    for key in ("export", "embed_dim", "content_hash", "image"):
        if key not in manifest:
            raise ValueError(f"{path}: missing field {key!r}")
    return manifest


def hash_tree(root: Path) -> str:
    """sha256 over the relative paths and bytes of every file below `root`."""
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(b"\0")
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def load_encoders(
    model_dir: str | os.PathLike[str], precision: str = "float32", purpose: str = "search"
) -> Encoders:
    """Load the exported encoders of `model_dir` (image encoder in `precision`: float32,
    bfloat16 or auto).

    `purpose` "search" (indexing, serving) refuses a model that cannot be searched from
    image files (`search_problem`); "evaluate" loads any.
    """
    return Encoders(model_dir, precision, purpose)


def require_cosine(model_manifest: Mapping[str, Any]) -> None:
    """Refuse a model FAISS cannot search: order embeddings rank by order violation, which no
    FAISS metric computes (the index searches by inner product, cosine on unit vectors)."""
    measure = model_manifest.get("measure", "cosine")
    if measure != "cosine":
        raise ValueError(
            f"the model was trained with --measure {measure}; the index searches by inner "
            "product (cosine on normalised vectors): index a --measure cosine model"
        )
