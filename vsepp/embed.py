"""Embed image files and captions in batches with the exported encoders.

Typed against `vsepp.model_dir.EncodersLike`, so tests can hand in a small stand-in. Every
file goes through the one decoder (`vsepp.images`). An image that cannot be read or decoded
(an `ImageFileError`) is skipped, logged and reported with its reason; it never stops a
build. Any other failure (the model's graph, a kernel, memory: `EncoderFailure`) is not the
file's and stops it, so that a broken model is never filed as a folder of bad images.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from vsepp.images import ImageFileError, read_image_file
from vsepp.model_dir import EncodersLike, jpeg_min_side

log = logging.getLogger(__name__)


class EncoderOutputError(ValueError):
    """The model returned something of the wrong shape: a model problem, not a data one."""


def _checked(out: Any, n: int, dim: int, what: str) -> np.ndarray:
    """The encoder output as float32 [n, dim], or an error naming what the model returned."""
    arr = np.asarray(out, dtype=np.float32)
    if arr.shape != (n, dim):
        raise EncoderOutputError(
            f"{what}: the model returned shape {arr.shape} for {n} inputs, expected "
            f"({n}, {dim}) (embed_dim in its manifest)"
        )
    return arr


def _read(path: Path, min_side: int | None) -> tuple[bytes | None, str | None]:
    """(canonical bytes, None) or (None, why the file cannot be used)."""
    try:
        return read_image_file(path, min_side=min_side), None
    except ImageFileError as e:
        return None, f"{e.reason}: {e}"


def embed_blobs(
    encoders: EncodersLike, blobs: Sequence[bytes]
) -> tuple[np.ndarray, list[str | None]]:
    """Embed image files in one call: (vectors [m, D] of the usable ones, in order; per blob
    None or why it could not be embedded).

    A batch with a file the decoder rejects is retried one image at a time so that a single
    corrupt file costs only itself. Every other error propagates: a model answer of the
    wrong shape (EncoderOutputError), the encoder failing (EncoderFailure).
    """
    dim = int(encoders.embed_dim)
    if not blobs:
        return np.zeros((0, dim), np.float32), []
    reasons: list[str | None] = [None] * len(blobs)
    try:
        out = _checked(encoders.encode_image_bytes(blobs), len(blobs), dim, "images")
    except ImageFileError:  # a file in the batch the decoder rejects: find it
        rows = []
        for i, blob in enumerate(blobs):
            try:
                rows.append(_checked(encoders.encode_image_bytes([blob]), 1, dim, "images"))
            except ImageFileError as e:
                reasons[i] = f"{e.reason}: {e}"
        out = np.concatenate(rows) if rows else np.zeros((0, dim), np.float32)
    finite = np.isfinite(out).all(axis=1)
    if not finite.all():
        ok = [i for i, r in enumerate(reasons) if r is None]
        for pos in np.flatnonzero(~finite):
            reasons[ok[pos]] = "the model returned NaN or infinite values"
        out = out[finite]
    return out, reasons


def embed_images(
    encoders: EncodersLike,
    image_ids: Sequence[str],
    paths: Sequence[Path],
    *,
    batch_size: int = 32,
) -> tuple[np.ndarray, list[int], list[dict[str, str]]]:
    """Embed image files: (vectors float32 [m, D], kept positions, skipped [{image_id, reason}]).

    Files that are no usable image are skipped before the model sees them; see
    `embed_blobs` for what happens to a batch the model rejects.
    """
    if len(image_ids) != len(paths):
        raise ValueError(f"{len(image_ids)} image ids for {len(paths)} paths")
    vectors: list[np.ndarray] = []
    kept: list[int] = []
    skipped: list[dict[str, str]] = []

    def skip(i: int, reason: str) -> None:
        log.warning("skipping image %s (%s): %s", image_ids[i], paths[i], reason)
        skipped.append({"image_id": image_ids[i], "reason": reason})

    with tqdm(total=len(paths), desc="images", unit="img", disable=None) as bar:
        for start in range(0, len(paths), batch_size):
            batch: list[int] = []
            blobs: list[bytes] = []
            for i in range(start, min(start + batch_size, len(paths))):
                data, why = _read(Path(paths[i]), jpeg_min_side(encoders.manifest))
                if data is None:
                    skip(i, str(why))
                else:
                    batch.append(i)
                    blobs.append(data)
            out, reasons = embed_blobs(encoders, blobs)
            vectors.append(out)
            for i, reason in zip(batch, reasons, strict=True):
                if reason is None:
                    kept.append(i)
                else:
                    skip(i, reason)
            bar.update(min(batch_size, len(paths) - start))
    dim = int(encoders.embed_dim)
    out = np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32)
    log.info("embedded %d images, skipped %d", len(kept), len(skipped))
    return out, kept, skipped


def embed_texts(
    encoders: EncodersLike, texts: Sequence[str], *, batch_size: int = 256
) -> np.ndarray:
    """Embed captions / queries in batches: float32 [n, D]."""
    dim = int(encoders.embed_dim)
    chunks: list[np.ndarray] = []
    unknown = 0
    with tqdm(total=len(texts), desc="captions", unit="cap", disable=None) as bar:
        for start in range(0, len(texts), batch_size):
            batch = list(texts[start : start + batch_size])
            vecs, known = encoders.encode_texts(batch)
            chunks.append(_checked(vecs, len(batch), dim, "captions"))
            unknown += int((np.asarray(known) == 0).sum())
            bar.update(len(batch))
    if unknown:
        log.warning("%d of %d texts have no word in the model's vocabulary", unknown, len(texts))
    return np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)
