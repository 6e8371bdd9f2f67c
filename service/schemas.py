"""Request and response bodies of the HTTP API (the contract in shared/DESIGN.md)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator

DEFAULT_K = 10


class ErrorResponse(BaseModel):
    """Any 4xx/5xx answer that is not a field validation error."""

    detail: str = Field(description="What was wrong, in words.")


FILTER_REF = {"$ref": "#/components/schemas/Filter"}
FilterField = Annotated[
    dict[str, Any] | None,
    WithJsonSchema({"anyOf": [FILTER_REF, {"type": "null"}]}),
    Field(
        default=None,
        description="A condition on the images' fields (the Filter schema; docs/service.md): "
        'e.g. {"and": [{"field": "folder", "prefix": "holiday"}, '
        '{"field": "taken_at", "gte": "2023-01-01"}]}. Only images that satisfy it are '
        "searched; a caption search keeps the captions of such images.",
    ),
]
Sort = Literal["score", "taken_at", "-taken_at"]


class SearchOptions(BaseModel):
    """What narrows and orders a search, besides k and offset."""

    # Strict: "5" or true for k is not an integer, as the schema says (no silent coercion).
    # Forbid: a misspelt option must never silently widen a search (422 naming it).
    model_config = ConfigDict(strict=True, extra="forbid")

    filter: FilterField
    min_score: float | None = Field(
        default=None,
        ge=-1.0,
        le=1.0,
        description="A relevance cut-off: results with a lower cosine score are dropped; "
        "the response's `passed` says how many of the candidates reached it.",
    )
    collapse: bool = Field(
        default=False,
        description="Show each near-duplicate group (a burst, an edited copy) once, by its "
        "best-scoring member, which carries the others as `duplicates`.",
    )
    sort: Sort = Field(
        default="score",
        description="score (best first, the default), taken_at (oldest first) or -taken_at "
        "(newest first): the order of the candidates that pass the cut-off (the best "
        "VSEPP_SORT_POOL by score), over which offset pages.",
    )


class TextSearchRequest(SearchOptions):
    """A sentence to find images for."""

    model_config = ConfigDict(
        strict=True,
        extra="forbid",
        json_schema_extra={"examples": [{"query": "a dog runs", "k": 10}]},
    )

    query: str = Field(min_length=1, description="The sentence; at most VSEPP_MAX_QUERY_CHARS.")
    k: int = Field(default=DEFAULT_K, ge=1, description="How many images; at most VSEPP_MAX_K.")
    offset: int = Field(
        default=0, ge=0, description="Results to skip (paging); at most VSEPP_MAX_K."
    )

    @field_validator("k", "offset", mode="before")
    @classmethod
    def _integral_number(cls, value: Any) -> Any:
        # JSON Schema's integer is any number without a fraction: 78.0 is one, "78" is not.
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value


class DuplicateGroup(BaseModel):
    """The other members of an image's near-duplicate group."""

    count: int = Field(ge=0, description="How many other images are in the group.")
    image_ids: list[str] = Field(description="Their ids (at most 100).")


class ImageResult(BaseModel):
    """One image found by a query."""

    rank: int = Field(ge=1, description="1 for the best match.")
    image_id: str
    score: float = Field(description="Cosine similarity between the query and the image.")
    image_url: str = Field(description="Where GET /images/{image_id} serves the image.")
    thumb_url: str = Field(description="Where GET /thumbs/{image_id} serves a thumbnail.")
    captions: list[str] = Field(description="The image's captions in the index.")
    width: int | None = Field(default=None, description="Upright width in pixels, if known.")
    height: int | None = Field(default=None, description="Upright height in pixels, if known.")
    meta: dict[str, Any] | None = Field(
        default=None, description="The image's other columns in the list it was indexed from."
    )
    folder: str = Field(default="", description='The id\'s directory ("" at the top).')
    taken_at: str | None = Field(
        default=None, description="When it was taken (ISO 8601, UTC), if known."
    )
    taken_at_source: Literal["exif", "mtime"] | None = Field(
        default=None, description="Where taken_at comes from: the EXIF date or the file's time."
    )
    camera_make: str | None = None
    camera_model: str | None = None
    lat: float | None = Field(default=None, description="GPS latitude (EXIF), if present.")
    lon: float | None = Field(default=None, description="GPS longitude (EXIF), if present.")
    duplicates: DuplicateGroup | None = Field(
        default=None,
        description="With collapse: the near-duplicates this result stands for (not shown).",
    )


class Page(BaseModel):
    """What a filtered, cut-off or re-ordered search says besides its results."""

    passed: int | None = Field(
        default=None,
        description="With min_score: how many candidates reached it (the page is cut from them).",
    )
    message: str | None = Field(default=None, description="Why results are empty, if they are.")


class TextSearchResponse(Page):
    """Images for a sentence, best first."""

    results: list[ImageResult]
    took_ms: float
    known_words: int = Field(description="Words of the query in the model's vocabulary.")
    no_known_words: bool = Field(
        description="True when none of the query's words is known: results are then empty."
    )


class CaptionResult(BaseModel):
    """One caption found for an image."""

    rank: int = Field(ge=1)
    caption: str
    caption_id: str = Field(description="The caption's id in the index (IMAGE_ID#n).")
    caption_row: int = Field(ge=0, description="Row of the caption in the caption index.")
    image_id: str | None = Field(
        description="The indexed image this caption belongs to; null for a corpus caption."
    )
    score: float = Field(description="Cosine similarity between the image and the caption.")
    image_url: str | None


class ImageSearchResponse(Page):
    """Captions for an image, best first."""

    results: list[CaptionResult]
    took_ms: float
    width: int | None = Field(default=None, description="Decoded width of an upload.")
    height: int | None = Field(default=None, description="Decoded height of an upload.")


class ImageToImageResponse(Page):
    """Indexed images nearest to an indexed image, best first (the image itself first)."""

    results: list[ImageResult]
    took_ms: float


class EmbedTextRequest(BaseModel):
    """Sentences to embed."""

    model_config = ConfigDict(strict=True, extra="forbid")
    texts: list[str] = Field(min_length=1, description="At most VSEPP_MAX_EMBED_TEXTS.")


class EmbedResponse(BaseModel):
    """Vectors in the joint space (L2-normalised), one per input."""

    vectors: list[list[float]]
    dim: int
    model_hash: str
    known_words: list[int] | None = Field(
        default=None, description="Per text: words in the vocabulary (texts only)."
    )
    took_ms: float


class ModelFacts(BaseModel):
    model_hash: str
    embed_dim: int
    cnn: str | None = None
    vocab_size: int | None = None
    format: str | None = None


class IndexFacts(BaseModel):
    images: int
    captions: int
    model_hash: str | None = None
    image_index_type: str | None = None
    caption_index_type: str | None = None
    built_at: str | None = None
    format: str | None = None
    build_id: str | None = Field(default=None, description="The build being served.")


class ReloadFacts(BaseModel):
    reloads: int = Field(description="Rebuilt indexes swapped in since the start.")
    last_error: str | None = Field(
        default=None, description="Why the last reload was refused (the old index serves on)."
    )
    interval_s: float = Field(description="Manifest check interval; 0: SIGHUP or admin only.")
    checks: int = Field(
        default=0, description="Manifest checks the watcher has made since the start."
    )
    worker_pid: int = Field(
        description="The process that answered: with several workers each reloads on its own."
    )


class ReloadResponse(BaseModel):
    """The index that now serves."""

    status: Literal["reloaded"]
    build_id: str | None
    images: int
    captions: int
    took_ms: float


class BatchingFacts(BaseModel):
    enabled: bool
    window_ms: float
    max_batch: int


class HealthResponse(BaseModel):
    """The service is up, with what it serves."""

    status: Literal["ok"]
    model: ModelFacts
    index: IndexFacts
    reload: ReloadFacts
    batching: BatchingFacts


class NotReadyResponse(BaseModel):
    """The service is not ready: still loading, or loading failed."""

    status: Literal["loading", "error"]
    detail: str


class FieldFacts(BaseModel):
    """A field a filter may name."""

    name: str
    kind: Literal["string", "int", "float", "bool", "timestamp"]
    min: float | int | str | None = Field(
        default=None, description="Smallest value (numbers; timestamps as ISO 8601)."
    )
    max: float | int | str | None = Field(default=None, description="Largest value.")
    missing: int = Field(description="Images without a value.")


class FolderCount(BaseModel):
    folder: str = Field(description='A folder of image ids ("" at the top).')
    images: int


class FieldsResponse(BaseModel):
    """What a filter can name on the served index."""

    fields: list[FieldFacts]
    folders: list[FolderCount] = Field(description="Folders, the most images first.")
    more_folders: int = Field(description="Folders not listed (beyond the first 1000).")


class DuplicatesResponse(BaseModel):
    """An image's near-duplicate group (`index.build --near_duplicates`)."""

    image_id: str
    group: list[str] = Field(description="The group's images in index order, itself included.")
    threshold: float | None = Field(
        description="The cosine at which images were grouped; null: the index has no groups."
    )
