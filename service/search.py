"""The blocking work behind each endpoint: encode, search, with per-stage timings.

Everything here runs in worker threads (never on the event loop) and knows nothing of HTTP.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from index import LoadedIndex
from index.filters import Condition
from index.search import Ranked, caption_mask, image_mask, top_captions, top_images
from service.imaging import canonical_upload, rejected
from service.metrics import Metrics
from vsepp.images import CanonicalImage, ImageFileError
from vsepp.model_dir import EncodersLike, jpeg_min_side

MASKS_KEPT = 8  # filter masks kept per engine (a bool per image each)


@dataclass(frozen=True)
class TextQuery:
    """One text query as it waits in the batcher, with the engine (index) it is for."""

    text: str
    k: int
    engine: SearchEngine
    where: Condition | None = None  # parsed against this engine's index


@dataclass(frozen=True)
class Hits:
    """What a search found; `selected`: how many rows its filter kept (None: no filter)."""

    ranked: Ranked
    selected: int | None = None


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
class TextHits(Hits):
    """What a text query found, and how many of its words the model knows."""

    known_words: int = 0


class SearchEngine:
    """Encoders + index + metrics: the searches the routes ask for."""

    def __init__(self, encoders: EncodersLike, index: LoadedIndex, metrics: Metrics) -> None:
        self.encoders = encoders
        self.index = index
        self.metrics = metrics
        # The last masks by condition: a page sends one filter with query after query, and
        # evaluating it costs a pass over every record. Per engine, so per loaded index.
        self._masks: OrderedDict[str, np.ndarray] = OrderedDict()
        self._masks_lock = threading.Lock()

    def image_mask(self, where: Condition) -> np.ndarray:
        """bool per image: the images `where` keeps (cached by condition)."""
        with self._masks_lock:
            mask = self._masks.get(where.key)
            if mask is not None:
                self._masks.move_to_end(where.key)
                return mask
        mask = image_mask(self.index, where)
        with self._masks_lock:
            self._masks[where.key] = mask
            while len(self._masks) > MASKS_KEPT:
                self._masks.popitem(last=False)
        return mask

    def search_texts(self, queries: list[TextQuery]) -> list[TextHits]:
        """Encode a batch of text queries in one call and search their images in one call.

        The batch is searched once with the largest k and each query keeps its own top k;
        for exact (flat) indexes that is the very same answer as searching alone.
        """
        with self.metrics.stage("encode", "text"):
            vectors, known = self.encoders.encode_texts([q.text for q in queries])
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        known = np.asarray(known).reshape(-1)
        out: list[TextHits | None] = [None] * len(queries)
        plain = [i for i, q in enumerate(queries) if q.where is None]
        if plain:
            k_max = max(queries[i].k for i in plain)
            with self.metrics.stage("search", "text"):
                found = top_images(self.index, vectors[plain], k_max)
            for i, f in zip(plain, found, strict=True):
                ranked = Ranked(f.scores[: queries[i].k], f.rows[: queries[i].k])
                out[i] = TextHits(ranked, None, int(known[i]))
        for i, q in enumerate(queries):
            if q.where is not None:
                hits = self.search_images(vectors[i], q.k, q.where, "text")
                out[i] = TextHits(hits.ranked, hits.selected, int(known[i]))
        return [h for h in out if h is not None]

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

    def search_captions(self, vector: np.ndarray, k: int, where: Condition | None = None) -> Hits:
        """The k captions nearest to one vector, among those of the images `where` keeps."""
        with self.metrics.stage("search", "image"):
            if where is None:
                return Hits(top_captions(self.index, vector, k)[0])
            mask = caption_mask(self.index, self.image_mask(where))
            return Hits(top_captions(self.index, vector, k, mask)[0], int(mask.sum()))

    def search_images(
        self, vector: np.ndarray, k: int, where: Condition | None = None, kind: str = "image"
    ) -> Hits:
        """The k images nearest to one vector, among those `where` keeps."""
        with self.metrics.stage("search", kind):
            if where is None:
                return Hits(top_images(self.index, vector, k)[0])
            mask = self.image_mask(where)
            return Hits(top_images(self.index, vector, k, mask)[0], int(mask.sum()))
