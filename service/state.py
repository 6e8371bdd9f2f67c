"""What one app instance holds: settings, metrics and, once loaded, the model and index."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
from PIL import Image

from index import LoadedIndex, check_built_with, load_index
from service.batching import MicroBatcher
from service.config import Settings
from service.metrics import Metrics
from service.search import SearchEngine, TextHits, TextQuery
from vsepp.images import canonical_image_bytes
from vsepp.model_dir import EncodersLike, load_encoders

logger = logging.getLogger(__name__)


@dataclass
class Backend:
    """The loaded model and index with what the routes build on them."""

    encoders: EncodersLike
    index: LoadedIndex
    engine: SearchEngine
    text_batcher: MicroBatcher[TextQuery, TextHits]
    image_rows: dict[str, int]  # image_id -> row of the image index


def check_same_model(encoders: EncodersLike, index: LoadedIndex) -> None:
    """Refuse an index built with another model (index.check_built_with)."""
    check_built_with(index.index_dir, index.manifest, encoders.model_hash, encoders.embed_dim)


def load_objects(
    settings: Settings, encoders: EncodersLike | None, index: LoadedIndex | None
) -> tuple[EncodersLike, LoadedIndex]:
    """Load whichever of the model and the index were not handed in (blocking)."""
    if encoders is None:
        if settings.model_dir is None:
            raise RuntimeError("no model: set VSEPP_MODEL_DIR (or pass --model_dir)")
        start = time.perf_counter()
        encoders = load_encoders(settings.model_dir)
        logger.info(
            "loaded model %s from %s in %.1fs",
            encoders.model_hash[:12],
            settings.model_dir,
            time.perf_counter() - start,
        )
    if settings.faiss_threads:
        import faiss

        faiss.omp_set_num_threads(settings.faiss_threads)
    if index is None:
        if settings.index_dir is None:
            raise RuntimeError("no index: set VSEPP_INDEX_DIR (or pass --index_dir)")
        start = time.perf_counter()
        index = load_index(
            settings.index_dir,
            expected_model_hash=encoders.model_hash,
            mmap=settings.mmap_index,
        )
        logger.info(
            "loaded index of %d images / %d captions from %s in %.1fs",
            len(index.image_ids),
            len(index.captions),
            settings.index_dir,
            time.perf_counter() - start,
        )
    check_same_model(encoders, index)
    return encoders, index


def _gray_png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (128, 128, 128)).save(buffer, "PNG")
    return canonical_image_bytes(buffer.getvalue())


_WARM_UP_PNG = _gray_png(32)


def warm_up(encoders: EncodersLike) -> None:
    """One tiny call per encoder, so that TensorFlow traces its graphs now and not on the
    first user's request (hundreds of milliseconds on a CPU)."""
    start = time.perf_counter()
    encoders.encode_texts(["warm up"])
    encoders.encode_image_bytes([_WARM_UP_PNG])
    logger.info("warmed up the encoders in %.2fs", time.perf_counter() - start)


@dataclass
class ServiceState:
    """Per-app state, kept on `app.state.vsepp` and reached through service.deps."""

    settings: Settings
    metrics: Metrics
    backend: Backend | None = None
    error: str | None = None
    _limiter: tuple[asyncio.AbstractEventLoop, anyio.CapacityLimiter] | None = field(
        default=None, repr=False
    )

    def install(self, encoders: EncodersLike, index: LoadedIndex) -> Backend:
        """Make the service ready with these objects."""
        check_same_model(encoders, index)
        engine = SearchEngine(encoders, index, self.metrics)
        batcher: MicroBatcher[TextQuery, TextHits] = MicroBatcher(
            engine.search_texts,
            window_s=self.settings.batch_window_ms / 1000.0,
            max_batch=self.settings.batch_max,
            on_batch=self.metrics.text_batch_size.observe,
        )
        rows = {image_id: row for row, image_id in enumerate(index.image_ids)}
        self.backend = Backend(encoders, index, engine, batcher, rows)
        self.error = None
        return self.backend

    async def load(self, encoders: EncodersLike | None, index: LoadedIndex | None) -> None:
        """Load what is missing in a worker thread; on failure keep the reason for /health."""

        def load_and_warm() -> tuple[EncodersLike, LoadedIndex]:
            loaded = load_objects(self.settings, encoders, index)
            if encoders is None:  # handed-in encoders are the caller's business
                warm_up(loaded[0])
            return loaded

        try:
            loaded = await anyio.to_thread.run_sync(load_and_warm)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            logger.exception("loading the model or the index failed")
            return
        self.install(*loaded)

    def image_limiter(self) -> anyio.CapacityLimiter:
        """Thread limiter for image decode+encode, one per event loop."""
        loop = asyncio.get_running_loop()
        if self._limiter is None or self._limiter[0] is not loop:
            self._limiter = (loop, anyio.CapacityLimiter(self.settings.image_concurrency))
        return self._limiter[1]

    async def aclose(self) -> None:
        """Stop background work (the batcher's worker)."""
        if self.backend is not None:
            await self.backend.text_batcher.aclose()

    def facts(self) -> dict[str, Any]:
        """Model and index facts for /health."""
        assert self.backend is not None
        encoders, index = self.backend.encoders, self.backend.index
        model = encoders.manifest if isinstance(encoders.manifest, dict) else {}
        text = model.get("text") if isinstance(model.get("text"), dict) else {}
        meta = index.manifest if isinstance(index.manifest, dict) else {}
        images = meta.get("images") if isinstance(meta.get("images"), dict) else {}
        captions = meta.get("captions") if isinstance(meta.get("captions"), dict) else {}
        return {
            "model": {
                "model_hash": encoders.model_hash,
                "embed_dim": int(encoders.embed_dim),
                "cnn": model.get("cnn"),
                "vocab_size": (text or {}).get("vocab_size"),
                "format": model.get("format"),
            },
            "index": {
                "images": len(index.image_ids),
                "captions": len(index.captions),
                "model_hash": meta.get("model_hash"),
                "image_index_type": (images or {}).get("index_type"),
                "caption_index_type": (captions or {}).get("index_type"),
                "built_at": meta.get("built_at"),
                "format": meta.get("format"),
            },
            "batching": {
                "enabled": self.backend.text_batcher.enabled,
                "window_ms": self.settings.batch_window_ms,
                "max_batch": self.settings.batch_max,
            },
        }
