"""The floor for bench_service.py: a bare FastAPI app on the same uvicorn.

POST /search/text takes the same JSON body as the service (validated by a pydantic model
of the same fields) and answers a constant body of the same shape and size: a response the
real service gave, read from the file named by FLOOR_RESPONSE. What the service costs
beyond this is ours: batching, thread hops, the model, FAISS, building the response.

    FLOOR_RESPONSE=body.json python -m uvicorn benchmarks.floor_app:app --port 8001
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI, Response
from pydantic import BaseModel

BODY = Path(os.environ["FLOOR_RESPONSE"]).read_bytes()

app = FastAPI(title="floor")


class Query(BaseModel):
    query: str
    k: int = 10


@app.post("/search/text")
async def search_text(body: Query) -> Response:
    """The constant answer."""
    return Response(BODY, media_type="application/json")
