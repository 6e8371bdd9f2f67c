"""What one app instance holds: settings, metrics and, once loaded, the model and index."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from PIL import Image

from index import LoadedIndex, check_built_with, load_index
from index.store import MANIFEST
from service.batching import MicroBatcher
from service.config import Settings
from service.metrics import Metrics
from service.results import ResultItems
from service.search import SearchEngine, TextHits, TextQuery, search_text_batch
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
    items: ResultItems  # the JSON items of this index's results


def settle_heap() -> None:
    """Take what is alive once the service has loaded (the libraries, the model, the first
    index: nearly all of its objects) out of the cyclic garbage collector's sight.

    Its full collections otherwise walk them all, find nothing, and stall every request in
    flight for ~170 ms at a time under load (benchmarks/README.md, issue 23). Frozen
    objects are still freed when their last reference goes (a reloaded index's columns and
    FAISS index are: tests/test_service_reload.py); only a cycle among them would stay.
    """
    gc.collect()
    gc.freeze()


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
        encoders = load_encoders(settings.model_dir, settings.precision)
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


def _build_id_on_disk(index_dir: Path | None) -> str | None:
    """The build id in the index directory's manifest now, None if it cannot be read."""
    if index_dir is None:
        return None
    try:
        value = json.loads((Path(index_dir) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    build = value.get("build_id") if isinstance(value, dict) else None
    return str(build) if build else None


def warm_up(encoders: EncodersLike) -> None:
    """One tiny call per encoder, so that TensorFlow traces its graphs now and not on the
    first user's request (hundreds of milliseconds on a CPU)."""
    start = time.perf_counter()
    encoders.encode_texts(["warm up"])
    encoders.encode_image_bytes([_WARM_UP_PNG])
    logger.info("warmed up the encoders in %.2fs", time.perf_counter() - start)


class ReloadRefused(Exception):
    """A rebuilt index that was not swapped in; the old one keeps serving."""


@dataclass
class ReloadStatus:
    """What /health says of reloading."""

    reloads: int = 0  # indexes swapped in since start
    last_error: str | None = None  # why the last attempt was refused, None after a success
    refused_build: str | None = None  # build id of the refused index (not retried as is)
    checks: int = 0  # passes the manifest watcher has made (tests wait on it)


@dataclass
class ServiceState:
    """Per-app state, kept on `app.state.vsepp` and reached through service.deps."""

    settings: Settings
    metrics: Metrics
    backend: Backend | None = None
    error: str | None = None
    reload_status: ReloadStatus = field(default_factory=ReloadStatus)
    _limiter: tuple[asyncio.AbstractEventLoop, anyio.CapacityLimiter] | None = field(
        default=None, repr=False
    )
    _batcher: MicroBatcher[TextQuery, TextHits] | None = field(default=None, repr=False)
    _reloading: asyncio.Lock | None = field(default=None, repr=False)

    def install(self, encoders: EncodersLike, index: LoadedIndex) -> Backend:
        """Make the service ready with these objects (at start, and on each reload).

        The one text batcher outlives reloads: each query carries its own engine, so a
        request that began on the old index is answered from it.
        """
        check_same_model(encoders, index)
        engine = SearchEngine(encoders, index, self.metrics)
        if self._batcher is None:
            self._batcher = MicroBatcher(
                search_text_batch,
                window_s=self.settings.batch_window_ms / 1000.0,
                max_batch=self.settings.batch_max,
                on_batch=self.metrics.text_batch_size.observe,
            )
        # One assignment: a request sees the old backend or the new one, never a mix.
        self.backend = Backend(encoders, index, engine, self._batcher, ResultItems(index))
        self.error = None
        return self.backend

    async def reload(self) -> Backend:
        """Load the index directory again and swap it in once whole and of this model.

        Raises ReloadRefused (the reason is also logged and shown by /health) and keeps
        serving the old index when the new one is broken or of another model.
        """
        if self.backend is None or self.settings.index_dir is None:
            raise ReloadRefused("nothing to reload: the service has not loaded an index yet")
        if self._reloading is None:
            self._reloading = asyncio.Lock()
        async with self._reloading:
            old = self.backend
            settings = self.settings
            try:
                index = await anyio.to_thread.run_sync(
                    lambda: load_index(
                        settings.index_dir,  # type: ignore[arg-type]
                        expected_model_hash=old.encoders.model_hash,
                        mmap=settings.mmap_index,
                    )
                )
                backend = self.install(old.encoders, index)
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
                self.reload_status.last_error = reason
                self.reload_status.refused_build = _build_id_on_disk(settings.index_dir)
                logger.error(
                    "reload refused, still serving build %s: %s",
                    old.index.manifest.get("build_id"),
                    reason,
                )
                raise ReloadRefused(reason) from exc
            self.reload_status.reloads += 1
            self.reload_status.last_error = self.reload_status.refused_build = None
            logger.info(
                "reloaded the index: build %s (%d images, %d captions), was %s",
                index.manifest.get("build_id"),
                len(index.image_ids),
                len(index.captions),
                old.index.manifest.get("build_id"),
            )
            return backend

    async def reload_quietly(self) -> None:
        """`reload`, for signal handlers and the watcher: a refusal is logged, not raised."""
        with contextlib.suppress(ReloadRefused):
            await self.reload()

    async def reload_if_new(self, *, asked: bool) -> None:
        """Reload quietly unless the manifest on disk names the build that serves.

        `asked` (SIGHUP) also retries the build refused last and reports an unreadable
        manifest; the watcher (`asked` False) does neither, so that it does not log the
        same refusal every interval.

        Every build writes a new build id, so an unchanged id means unchanged files: a
        worker that reloaded on an HTTP request skips the SIGHUP its siblings get.
        """
        if self.backend is None or self.settings.index_dir is None:
            return
        on_disk = await anyio.to_thread.run_sync(_build_id_on_disk, self.settings.index_dir)
        skip = {self.backend.index.manifest.get("build_id")}
        if not asked:
            skip |= {self.reload_status.refused_build, None}
        if on_disk in skip:
            logger.debug("build %s: nothing to reload", on_disk)
            return
        await self.reload_quietly()

    async def watch(self, interval_s: float) -> None:
        """Reload whenever the index directory's manifest names another build."""
        while True:
            await asyncio.sleep(interval_s)
            await self.reload_if_new(asked=False)
            self.reload_status.checks += 1

    async def load(self, encoders: EncodersLike | None, index: LoadedIndex | None) -> None:
        """Load what is missing in a worker thread; on failure keep the reason for /health."""

        def load_and_warm() -> tuple[EncodersLike, LoadedIndex]:
            loaded = load_objects(self.settings, encoders, index)
            if encoders is None:  # handed-in encoders are the caller's business
                warm_up(loaded[0])
            settle_heap()
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
        if self._batcher is not None:
            await self._batcher.aclose()

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
                "build_id": meta.get("build_id"),
            },
            "reload": {
                "reloads": self.reload_status.reloads,
                "last_error": self.reload_status.last_error,
                "interval_s": self.settings.reload_interval_s,
                "checks": self.reload_status.checks,
                "worker_pid": os.getpid(),
            },
            "batching": {
                "enabled": self.backend.text_batcher.enabled,
                "window_ms": self.settings.batch_window_ms,
                "max_batch": self.settings.batch_max,
            },
        }
