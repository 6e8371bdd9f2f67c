"""Shared route dependencies, as Annotated aliases, and the plain functions behind them.

They are `async def` although they do not await: FastAPI runs a plain `def` dependency in
a worker thread, and three thread hops per request cost more than the search itself. The
search endpoints call `service_state` and `loaded_backend` themselves instead: resolving
dependencies is FastAPI's costliest step per request after the body (benchmarks/README.md,
the profile of issue 23), and they are the endpoints that take the load.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from service.config import Settings
from service.metrics import Metrics
from service.state import Backend, ServiceState


def service_state(request: Request) -> ServiceState:
    """The app's ServiceState (set by create_app)."""
    state: ServiceState = request.app.state.vsepp
    return state


def loaded_backend(state: ServiceState) -> Backend:
    """The loaded model and index; 503 while they load or when loading failed."""
    if state.backend is None:
        if state.error is not None:
            detail = f"the model or the index failed to load: {state.error}"
        else:
            detail = "the model and the index are still loading; retry shortly"
        raise HTTPException(status_code=503, detail=detail, headers={"Retry-After": "5"})
    return state.backend


async def get_state(request: Request) -> ServiceState:
    """The app's ServiceState (set by create_app)."""
    return service_state(request)


StateDep = Annotated[ServiceState, Depends(get_state)]


async def get_settings(state: StateDep) -> Settings:
    """The app's settings."""
    return state.settings


async def get_metrics(state: StateDep) -> Metrics:
    """The app's metrics."""
    return state.metrics


async def get_backend(state: StateDep) -> Backend:
    """The loaded model and index; 503 while they load or when loading failed."""
    return loaded_backend(state)


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
BackendDep = Annotated[Backend, Depends(get_backend)]
