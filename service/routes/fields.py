"""GET /fields: what a filter can name on the served index, for clients and the page."""

from __future__ import annotations

import anyio.to_thread
import pyarrow as pa
import pyarrow.compute as pc
from fastapi import APIRouter

from index.search import filter_fields
from index.store import LoadedIndex
from service.deps import BackendDep
from service.route_class import ServiceRoute
from service.schemas import ErrorResponse, FieldFacts, FieldsResponse, FolderCount

router = APIRouter(tags=["search"], route_class=ServiceRoute)

MAX_FOLDERS = 1000  # the most frequent folders listed; a filter may name any


@router.get(
    "/fields",
    response_model=FieldsResponse,
    responses={503: {"model": ErrorResponse, "description": "Model and index not loaded yet."}},
)
async def fields(backend: BackendDep) -> FieldsResponse:
    """The fields a filter may name (with their kinds and ranges) and the folders."""
    return await anyio.to_thread.run_sync(facts, backend.index)


def facts(index: LoadedIndex) -> FieldsResponse:
    """The filterable fields of `index`, their value ranges, and its folders by count."""
    table = index.image_table
    named = filter_fields(index)
    out = []
    for name, field in sorted(named.items()):
        if name.startswith("meta.") and name[len("meta.") :] in named:
            continue  # the same column under its short name
        column = table.column(field.column)
        low = high = None
        if field.kind in ("int", "float", "timestamp") and column.null_count < len(column):
            bounds = pc.min_max(column)
            low, high = (_plain(bounds["min"]), _plain(bounds["max"]))
        out.append(FieldFacts(name=name, kind=field.kind, min=low, max=high,
                              missing=column.null_count))  # fmt: skip
    counts = pc.value_counts(table.column("folder")).to_pylist()
    counts.sort(key=lambda c: (-c["counts"], c["values"] or ""))
    folders = [FolderCount(folder=c["values"] or "", images=c["counts"]) for c in counts]
    return FieldsResponse(
        fields=out, folders=folders[:MAX_FOLDERS], more_folders=max(0, len(folders) - MAX_FOLDERS)
    )


def _plain(scalar: pa.Scalar) -> float | int | str | None:
    value = scalar.as_py()
    return value.isoformat() if hasattr(value, "isoformat") else value
