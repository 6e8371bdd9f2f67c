"""The blocking work behind each endpoint: encode, search, with per-stage timings.

Everything here runs in worker threads (never on the event loop) and knows nothing of HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from index import LoadedIndex
from service.imaging import canonical_upload, rejected
from service.metrics import Metrics
from vsepp.images import CanonicalImage, ImageFileError
from vsepp.model_dir import EncodersLike, jpeg_min_side


@dataclass(frozen=True)
class TextQuery:
    """One text query as it waits in the batcher, with the engine (index) it is for."""

    text: str
    k: int
    engine: SearchEngine


def search_text_batch(queries: list[TextQuery]) -> list[TextHits]:
    """Search a batch of text queries, each with its own engine: across a reload a batch
    may hold queries for the old index and for the new one, and each gets an answer whole
    from the index it was asked of."""
    engines: dict[int, SearchEngine] = {id(q.engine): q.engine for q in queries}
    if len(engines) == 1:
        return queries[0].engine.search_texts(queries)
    out: list[TextHits | None] = [None] * len(queries)
    for key, engine in engines.items():
        rows = [i for i, q in enumerate(queries) if id(q.engine) == key]
        for i, hits in zip(rows, engine.search_texts([queries[i] for i in rows]), strict=True):
            out[i] = hits
    return [h for h in out if h is not None]


@dataclass(frozen=True)
class Ranked:
    """Rows of an index with their cosine scores, best first, padding (-1) removed."""

    scores: np.ndarray  # float32 [m]
    rows: np.ndarray  # int64 [m]

    def after(self, offset: int) -> Ranked:
        """The results past the first `offset` (a page further down)."""
        return Ranked(self.scores[offset:], self.rows[offset:]) if offset else self


@dataclass(frozen=True)
class TextHits:
    """What a text query found, and how many of its words the model knows."""

    known_words: int
    ranked: Ranked


def _ranked(scores: np.ndarray, rows: np.ndarray, k: int) -> Ranked:
    scores, rows = np.asarray(scores[:k], dtype=np.float32), np.asarray(rows[:k], dtype=np.int64)
    keep = rows >= 0
    return Ranked(scores=scores[keep], rows=rows[keep])


class SearchEngine:
    """Encoders + index + metrics: the searches the routes ask for."""

    def __init__(self, encoders: EncodersLike, index: LoadedIndex, metrics: Metrics) -> None:
        self.encoders = encoders
        self.index = index
        self.metrics = metrics
        self.num_images = len(index.image_ids)
        self.num_captions = len(index.captions)

    def search_texts(self, queries: list[TextQuery]) -> list[TextHits]:
        """Encode a batch of text queries in one call and search their images in one call.

        The batch is searched once with the largest k and each query keeps its own top k;
        for exact (flat) indexes that is the very same answer as searching alone.
        """
        with self.metrics.stage("encode", "text"):
            vectors, known = self.encoders.encode_texts([q.text for q in queries])
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        known = np.asarray(known).reshape(-1)
        k_max = min(max(q.k for q in queries), self.num_images)
        if k_max < 1:
            empty = Ranked(np.zeros(0, np.float32), np.zeros(0, np.int64))
            return [TextHits(int(n), empty) for n in known]
        with self.metrics.stage("search", "text"):
            scores, rows = self.index.search_images(vectors, k_max)
        return [
            TextHits(int(known[i]), _ranked(scores[i], rows[i], q.k)) for i, q in enumerate(queries)
        ]

    def embed_texts(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(vectors float32 [n, D], known-word counts [n]) of `texts`."""
        with self.metrics.stage("encode", "text"):
            vectors, known = self.encoders.encode_texts(texts)
        return np.asarray(vectors, dtype=np.float32), np.asarray(known).reshape(-1)

    def decode(self, data: bytes, max_pixels: int) -> CanonicalImage:
        """An uploaded image file in the encoder's canonical form (imaging.canonical_upload)."""
        with self.metrics.stage("decode", "image"):
            min_side = jpeg_min_side(self.encoders.manifest)
            return canonical_upload(data, max_pixels=max_pixels, min_side=min_side)

    def embed_image(self, data: bytes) -> np.ndarray:
        """float32 [D] vector of one image file, decoded as indexing decoded it.

        Raises ImageRejected (400) for a JPEG/PNG body the decoder finds truncated or corrupt.
        """
        with self.metrics.stage("encode", "image"):
            try:
                vectors = self.encoders.encode_image_bytes([data])
            except ImageFileError as e:
                raise rejected(e) from e
        return np.asarray(vectors, dtype=np.float32).reshape(-1)

    def embed_indexed_image(self, row: int) -> np.ndarray:
        """float32 [D] vector of an image of the index, encoded from its stored file.

        The file goes through the one decoder, as it did when the index was built, so the
        image finds itself with a score of 1.
        """
        image_id = self.index.image_ids[row]
        path = self.index.image_file(image_id)
        if path is None:
            raise FileNotFoundError(f"the index has no file for image {image_id!r}")
        data = path.read_bytes()
        with self.metrics.stage("encode", "image"):
            vectors = self.encoders.encode_image_bytes([data])
        return np.asarray(vectors, dtype=np.float32).reshape(-1)

    def search_captions(self, vector: np.ndarray, k: int) -> Ranked:
        """The k captions nearest to one vector."""
        k = min(k, self.num_captions)
        if k < 1:
            return Ranked(np.zeros(0, np.float32), np.zeros(0, np.int64))
        query = np.ascontiguousarray(vector.reshape(1, -1), dtype=np.float32)
        with self.metrics.stage("search", "image"):
            scores, rows = self.index.search_captions(query, k)
        return _ranked(scores[0], rows[0], k)

    def search_images(self, vector: np.ndarray, k: int) -> Ranked:
        """The k images nearest to one vector."""
        k = min(k, self.num_images)
        if k < 1:
            return Ranked(np.zeros(0, np.float32), np.zeros(0, np.int64))
        query = np.ascontiguousarray(vector.reshape(1, -1), dtype=np.float32)
        with self.metrics.stage("search", "image"):
            scores, rows = self.index.search_images(query, k)
        return _ranked(scores[0], rows[0], k)
