"""The app factory: `create_app(settings, encoders, index)` and the module-level `app`.

The model and the index load once per process in `lifespan`, in a worker thread, while the
server already answers (/health says 503 until they are in). Tests and embedders hand
ready objects to `create_app` instead; whatever is handed in is not loaded again.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from index import LoadedIndex
from service import errors, openapi
from service.config import Settings
from service.imaging import configure_pil
from service.metrics import Metrics
from service.middleware import BodyLimitMiddleware, ObservabilityMiddleware
from service.routes import admin, embed, fields, health, images, page, search, thumbs
from service.routes.page import page_html
from service.state import ServiceState
from vsepp.model_dir import EncodersLike

logger = logging.getLogger(__name__)

DESCRIPTION = """\
Cross-modal retrieval with VSE++ (Faghri et al., BMVC 2018): a sentence finds images,
an image finds captions. Scores are cosine similarities in the joint embedding space,
best first.
"""


def _version() -> str:
    try:
        return importlib.metadata.version("vsepp-search")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


def _on_sighup(state: ServiceState, tasks: list[asyncio.Task[None]]) -> None:
    """SIGHUP reloads the index unless it already serves the build on disk (in the
    process's main thread only; a test's in-thread server goes without)."""
    loop = asyncio.get_running_loop()

    def reload() -> None:
        logger.info("SIGHUP: reloading the index")
        tasks.append(loop.create_task(state.reload_if_new(asked=True), name="vsepp-reload"))

    try:
        loop.add_signal_handler(signal.SIGHUP, reload)
    except (RuntimeError, ValueError, NotImplementedError):
        logger.debug("no SIGHUP handler here (not the main thread)")
    else:
        tasks.append(loop.create_task(_remove_on_exit(loop), name="vsepp-sighup"))


async def _remove_on_exit(loop: asyncio.AbstractEventLoop) -> None:
    try:
        await asyncio.Event().wait()
    finally:
        loop.remove_signal_handler(signal.SIGHUP)


def create_app(
    settings: Settings | None = None,
    encoders: EncodersLike | None = None,
    index: LoadedIndex | None = None,
) -> FastAPI:
    """Build the service. Settings default to the environment (VSEPP_*); `encoders` and
    `index` default to loading VSEPP_MODEL_DIR and VSEPP_INDEX_DIR in the lifespan."""
    settings = settings if settings is not None else Settings()
    metrics = Metrics()
    state = ServiceState(settings=settings, metrics=metrics)
    if encoders is not None and index is not None:
        state.install(encoders, index)
    page_html()  # a missing page is a packaging error: fail now, not on the first visit

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = None
        background: list[asyncio.Task[None]] = []
        _on_sighup(state, background)
        if settings.reload_interval_s > 0:
            watcher = state.watch(settings.reload_interval_s)
            background.append(asyncio.create_task(watcher, name="vsepp-watch-index"))
        if state.backend is None and settings.load_in_background:
            loader = asyncio.create_task(state.load(encoders, index), name="vsepp-load")
        elif state.backend is None:
            await state.load(encoders, index)
            if state.error is not None:
                raise RuntimeError(f"the model or the index failed to load: {state.error}")
        try:
            yield
        finally:
            for task in [*background, *([loader] if loader is not None else [])]:
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            await state.aclose()

    app = FastAPI(
        title="VSE++ Search",
        version=_version(),
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.vsepp = state

    routers = [
        module.router for module in (health, search, fields, images, thumbs, embed, admin, page)
    ]
    for router in routers:
        app.include_router(router)

    errors.install(app, [route for router in routers for route in router.routes])
    openapi.install(app, settings)

    # add_middleware wraps what is already there: the last one added runs first.
    app.add_middleware(
        BodyLimitMiddleware,
        max_upload_bytes=settings.max_upload_bytes,
        max_json_bytes=settings.max_json_bytes,
        max_drain_bytes=settings.max_drain_bytes,
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
        )
    app.add_middleware(ObservabilityMiddleware, metrics=metrics)
    return app


app = create_app()
# The server process (not every app a test builds) aligns PIL's process-wide bomb guard with
# the pixel budget; vsepp.images checks the budget from the header either way.
configure_pil(app.state.vsepp.settings.max_image_pixels)
