"""The service's settings, read once from `VSEPP_*` environment variables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Everything the server can be told; each field is `VSEPP_<NAME>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="VSEPP_", extra="ignore")

    # Exported model directory (training.export); needed unless encoders are handed in.
    model_dir: Path | None = None
    # Index directory (index.build); needed unless an index is handed in.
    index_dir: Path | None = None
    # Memory-map the FAISS files so several workers share one copy of the index.
    mmap_index: bool = True
    # Load in the background and answer /health with 503 meanwhile (the default), or load
    # before accepting connections and exit if loading fails (several workers behind one
    # port: no worker then takes requests before it can answer them).
    load_in_background: bool = True

    # Largest k a client may ask for (a request without k gets 10, or max_k if smaller).
    max_k: int = Field(default=100, ge=1)
    # Candidates a search with min_score or a sort by date takes, best first by score, before
    # the cut-off, the order and the page (k, offset) are applied to them.
    sort_pool: int = Field(default=1000, ge=1)
    # Longest text query in characters (captions are a sentence; this is generous).
    max_query_chars: int = Field(default=1000, ge=1)
    # Most texts in one POST /embed/text.
    max_embed_texts: int = Field(default=256, ge=1)
    # Largest uploaded image file in bytes; bodies are refused while they stream in.
    max_upload_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    # Largest JSON request body in bytes.
    max_json_bytes: int = Field(default=1024 * 1024, ge=1)
    # After a 413, bytes of the refused body read and thrown away so that a client writing
    # its whole body before reading gets the answer, not a reset; 0 closes at once.
    max_drain_bytes: int = Field(default=128 * 1024 * 1024, ge=0)
    # Largest decoded image in pixels (width * height), checked from the header alone.
    max_image_pixels: int = Field(default=24_000_000, ge=1)

    # Origins allowed by CORS: a JSON list or a comma-separated string; empty turns CORS off.
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    # Micro-batching of text queries: how long the batcher waits for company (0, the
    # default: never; a batch is what queued up while the previous one ran) and the largest
    # batch (1 turns batching off: each query is encoded on its own in a worker thread).
    batch_window_ms: float = Field(default=0.0, ge=0.0)
    batch_max: int = Field(default=32, ge=1)
    # Precision of the image encoder for uploads: auto (bfloat16 where the CPU has AVX512_BF16
    # or AMX, float32 elsewhere, as `index.build` decides), float32 or bfloat16.
    precision: Literal["auto", "float32", "bfloat16"] = "auto"
    # Images decoded and encoded at once; bounds the memory that concurrent uploads take.
    image_concurrency: int = Field(default=2, ge=1)
    # FAISS (OpenMP) threads per search. One: a single query gains nothing from more, and
    # spinning threads on busy cores made one flat search over 10k vectors 8x slower.
    # Scale with --workers instead. 0 leaves FAISS's default (all cores).
    faiss_threads: int = Field(default=1, ge=0)

    # Bearer token of POST /admin/reload; unset (the default) turns the admin routes off.
    admin_token: SecretStr | None = None
    # Check the index directory's manifest this often (seconds) and reload a rebuilt index;
    # 0 (the default) only reloads on SIGHUP or POST /admin/reload.
    reload_interval_s: float = Field(default=0.0, ge=0.0)
    # Where GET /thumbs keeps the thumbnails it made (default: a folder in the temp dir).
    thumb_cache_dir: Path | None = None

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value
