"""The two objects the service consumes, as structural types (docs/CONTRACTS.md).

`index.encoders.Encoders` and `index.store.LoadedIndex` satisfy these without naming them,
and so does any stand-in a test hands to `create_app`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np


class Encoders(Protocol):
    """The exported image and text encoders of one model directory."""

    manifest: dict[str, Any]
    embed_dim: int
    model_hash: str

    def encode_texts(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(float32 [n, D] vectors, int32 [n] count of in-vocabulary words)."""
        ...

    def encode_image_bytes(self, blobs: Sequence[bytes]) -> np.ndarray:
        """float32 [n, D] vectors of encoded image files."""
        ...

    def encode_image_arrays(self, images: np.ndarray) -> np.ndarray:
        """float32 [n, D] vectors of uint8 [n, H, W, 3] RGB images."""
        ...


class LoadedIndex(Protocol):
    """The FAISS indexes of one index directory and their metadata."""

    manifest: dict[str, Any]
    image_ids: list[str]
    captions: list[str]
    caption_image_rows: np.ndarray

    def search_images(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores float32 [n, k], rows int64 [n, k]) of images, best first."""
        ...

    def search_captions(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores float32 [n, k], rows int64 [n, k]) of captions, best first."""
        ...

    def image_file(self, image_id: str) -> Path | None:
        """The stored file of an indexed image; None for anything not in images.json."""
        ...

    def captions_of(self, image_row: int) -> list[str]:
        """The captions that belong to image row `image_row`."""
        ...
