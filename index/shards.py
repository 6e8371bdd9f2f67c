"""A collection embedded into shards on disk: bounded memory, resumable, then indexed.

```
SHARDS_DIR/
  shards.json               {"format", "model_hash", "dim", "shard_size", "source",
                              "shards": N once the run is complete}
  shard-00000.npy           float32 [m, D]: the shard's image vectors, row i = images[i]
  shard-00000.captions.npy  float32 [c, D]: its images' own captions, in record order
  shard-00000.json          {"images": [{"image_id", "file", "sha256", "width", "height",
                              "meta", "captions", "taken_at"?, "taken_at_source"?,
                              "camera_make"?, "camera_model"?, "lat"?, "lon"?}], "seen": [ids],
                              "skipped": [{"image_id", "reason"}], "duplicates": [{"image_id",
                              "of"}]}  (written last; the capture fields: `index.capture`)
  corpus.npy, corpus.json   captions tied to no image (--captions), when given
```

Every `shard_size` source images (kept, skipped or duplicate alike) close a shard, so the
shards' boundaries depend on the source alone; a build killed at any moment resumes after
its last complete shard and ends with the same shards, hence the same index, as one never
interrupted. Byte-identical files (sha256) are embedded once; the later paths are recorded
as duplicates of the first. Reading and decoding run in parallel in tf.data; memory holds
one shard of vectors at a time. `ShardWriter` is the one writer of a shard, here and in
`index.beam_pipeline`; `read_shards` refuses a directory that cannot make a whole index.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from index.capture import FIELDS as CAPTURE_FIELDS
from index.capture import capture_facts
from index.faiss_index import normalize
from index.sources import SourceImage, decode_meta, encode_meta
from index.store import NewCaption, NewImage, capture_of
from index.streaming import ChunkSource, VectorSource
from vsepp.atomic import write_bytes_atomic, write_json_atomic
from vsepp.embed import embed_blobs, embed_texts
from vsepp.images import DEFAULT_MAX_PIXELS, ImageFileError, canonical_image
from vsepp.model_dir import EncodersLike, jpeg_min_side

log = logging.getLogger(__name__)

FORMAT = "vsepp-shards/1"
SHARD_SIZE = 10_000
META = "shards.json"


class ShardsError(ValueError):
    """A shards directory that does not fit the build asked for; the message says why."""


@dataclass
class Shard:
    """One complete shard, as read back."""

    number: int
    vectors: np.ndarray  # float32 [m, D] (memory-mapped)
    caption_vectors: np.ndarray  # float32 [c, D]
    images: list[dict[str, Any]]
    skipped: list[dict[str, Any]]
    duplicates: list[dict[str, Any]]
    seen: list[str]


@dataclass
class Summary:
    """What an embedding run did."""

    indexed: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> count
    duplicates: int = 0
    shards: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        why = ", ".join(f"{n} {r}" for r, n in sorted(self.skipped.items())) or "none"
        return (
            f"{self.indexed} images embedded in {self.seconds:.1f} s "
            f"({self.indexed / max(self.seconds, 1e-9):.1f} images/s), "
            f"{self.duplicates} duplicates, skipped: {why}"
        )


# Given a file's sha256 and its image id, the id of the first file with those bytes (this
# one when it is the first): the one rule that makes a duplicate.
Originals = Callable[[str, str], str]


def shard_name(n: int, suffix: str) -> str:
    """The file name of shard `n` with `suffix` (".npy", ".captions.npy", ".json")."""
    return f"shard-{n:05d}{suffix}"


def prepare_file(
    path: bytes, max_pixels: int, min_side: int | None
) -> tuple[bytes, bytes, int, int, bytes, bytes]:
    """(canonical bytes, sha256 of the file, width, height, b"" or the reason it is unusable,
    the capture fields as JSON: `index.capture`). Bytes only, for tf.numpy_function."""
    try:
        file = Path(os.fsdecode(path))
        raw = file.read_bytes()
        mtime_ns: int | None = file.stat().st_mtime_ns
    except OSError as e:
        return b"", b"", 0, 0, f"unreadable: {e.strerror or e}".encode(), b"{}"
    digest = hashlib.sha256(raw).hexdigest().encode()
    try:
        image = canonical_image(raw, max_pixels=max_pixels, min_side=min_side)
    except ImageFileError as e:
        return b"", digest, 0, 0, f"{e.reason}: {e}".encode(), b"{}"
    capture = json.dumps(capture_facts(raw, mtime_ns), sort_keys=True).encode()
    return image.data, digest, image.width, image.height, b"", capture


def _capture(text: bytes) -> dict[str, Any]:
    value = json.loads(text or b"{}")
    return value if isinstance(value, dict) else {}


Prepared = tuple[bytes, str, int, int, str, dict[str, Any]]  # data, sha256, w, h, reason, capture


def prepared(
    items: Iterable[SourceImage], max_pixels: int, min_side: int | None
) -> Iterator[tuple[SourceImage, Prepared]]:
    """The items with their files read and canonicalised, in order, in parallel (tf.data)."""
    import tensorflow as tf

    pending: dict[int, SourceImage] = {}
    failed: list[BaseException] = []

    def paths() -> Iterator[tuple[int, bytes]]:
        # An error of the source (a bad list row) ends the stream here and is raised below
        # as itself, not wrapped in a tf.data error.
        try:
            for i, item in enumerate(items):
                pending[i] = item
                yield i, os.fsencode(item.path)
        except Exception as e:
            failed.append(e)

    def prepare(path: tf.Tensor) -> tuple[tf.Tensor, ...]:
        out = tf.numpy_function(
            lambda p: tuple(
                np.asarray(v, dtype=object if k in (0, 1, 4, 5) else np.int32)
                for k, v in enumerate(prepare_file(bytes(p), max_pixels, min_side))
            ),
            [path],
            [tf.string, tf.string, tf.int32, tf.int32, tf.string, tf.string],
            stateful=False,
        )
        return tuple(tf.reshape(t, []) for t in out)

    ds = tf.data.Dataset.from_generator(
        paths,
        output_signature=(tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.string)),
    )
    ds = ds.map(
        lambda i, p: (i, *prepare(p)), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    ).prefetch(tf.data.AUTOTUNE)
    for i, data, digest, width, height, reason, capture in ds.as_numpy_iterator():
        item = pending.pop(int(i))
        facts = _capture(capture)
        yield item, (data, digest.decode(), int(width), int(height), reason.decode(), facts)
    if failed:
        raise failed[0]


class ShardWriter:
    """Collects one shard's images, embeds them in batches and writes the shard: the one
    writer of the layout, used in-process (`embed_to_shards`) and by `index.beam_embed`."""

    def __init__(self, encoders: EncodersLike, root: Path, number: int, batch_size: int):
        self.encoders, self.root, self.number, self.batch_size = encoders, root, number, batch_size
        self.vectors: list[np.ndarray] = []
        self.images: list[dict[str, Any]] = []
        self.skipped: list[dict[str, Any]] = []
        self.duplicates: list[dict[str, Any]] = []
        self.seen: list[str] = []
        self._batch: list[tuple[dict[str, Any], bytes]] = []

    def take(
        self,
        item: SourceImage,
        prepared: Prepared,
        original: Originals,
    ) -> None:
        """Account for one source image: skipped, a duplicate, or embedded (batched)."""
        data, digest, width, height, reason, capture = prepared
        self.seen.append(item.image_id)
        if reason:
            log.warning("skipping image %s (%s): %s", item.image_id, item.path, reason)
            self.skipped.append({"image_id": item.image_id, "reason": reason})
            return
        first = original(digest, item.image_id)
        if first != item.image_id:
            self.duplicates.append({"image_id": item.image_id, "of": first})
            return
        record = {
            "image_id": item.image_id,
            "file": str(item.path),
            "sha256": digest,
            "width": width,
            "height": height,
            "meta": encode_meta(item.meta),
            "captions": list(item.captions),
            **{k: capture[k] for k in CAPTURE_FIELDS if capture.get(k) is not None},
        }
        self._batch.append((record, data))
        if len(self._batch) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self._batch:
            return
        out, reasons = embed_blobs(self.encoders, [data for _, data in self._batch])
        self.vectors.append(out)
        for (record, _), reason in zip(self._batch, reasons, strict=True):
            if reason is None:
                self.images.append(record)
            else:
                log.warning("skipping image %s: %s", record["image_id"], reason)
                self.skipped.append({"image_id": record["image_id"], "reason": reason})
        self._batch = []

    def write(self) -> Shard:
        self.flush()
        dim = int(self.encoders.embed_dim)
        vectors = np.concatenate(self.vectors) if self.vectors else np.zeros((0, dim), np.float32)
        texts = [c for record in self.images for c in record["captions"]]
        captions = embed_texts(self.encoders, texts) if texts else np.zeros((0, dim), np.float32)
        _save_npy(self.root / shard_name(self.number, ".npy"), vectors)
        _save_npy(self.root / shard_name(self.number, ".captions.npy"), captions)
        body = {
            "images": self.images,
            "seen": self.seen,
            "skipped": self.skipped,
            "duplicates": self.duplicates,
        }
        # Written last: a shard with its .json is complete.
        path = self.root / shard_name(self.number, ".json")
        write_json_atomic(path, body, indent=None, ascii_only=True)
        return Shard(
            self.number, vectors, captions, self.images, self.skipped, self.duplicates, self.seen
        )


def _save_npy(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float32))
    write_bytes_atomic(path, buffer.getvalue())


def start_shards(
    root: Path,
    model_hash: str,
    dim: int,
    shard_size: int,
    source: dict[str, Any],
    resume: bool,
) -> list[Shard]:
    """Prepare `root` for a run (writing shards.json); the complete shards a resumed run
    keeps, after removing what a killed run left half written."""
    meta = {
        "format": FORMAT,
        "model_hash": model_hash,
        "dim": int(dim),
        "shard_size": shard_size,
        "source": source,
    }
    if root.exists() and any(root.iterdir()):
        if not resume:
            raise ShardsError(
                f"{root} holds shards of an earlier run: pass --resume to go on with it, or "
                "remove it to start again"
            )
        try:
            old = json.loads((root / META).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ShardsError(f"{root}: not a shards directory ({e})") from e
        for key in ("format", "model_hash", "dim", "shard_size", "source"):
            if old.get(key) != meta[key]:
                raise ShardsError(
                    f"{root} was made with another {key} ({old.get(key)!r}, now {meta[key]!r}); "
                    "remove it or point --shards_dir elsewhere"
                )
        # What a killed run left half written goes; its complete shards stay.
        for p in root.glob("shard-*"):
            n = _number(p)
            if n is not None and not (root / shard_name(n, ".json")).is_file():
                p.unlink()
        shards = list(read_shards(root, gaps=True))
        if "shards" in old:  # the count of a finished run no longer holds once it goes on
            write_json_atomic(root / META, meta)
        log.info("resuming after %d complete shards in %s", len(shards), root)
        return shards
    root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(root / META, meta)
    return []


def embed_to_shards(
    items: Iterable[SourceImage],
    encoders: EncodersLike,
    shards_dir: str | os.PathLike[str],
    *,
    source: dict[str, Any],
    shard_size: int = SHARD_SIZE,
    batch_size: int = 32,
    resume: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    dedupe: bool = True,
) -> Summary:
    """Embed the images of `items` into shards under `shards_dir` (see the module doc).

    With `dedupe` False every image is its own record even when its bytes repeat another's
    (a dataset split: each image keeps its own captions, as the protocol counts them).
    """
    if shard_size < 1:
        raise ValueError(f"shard_size={shard_size}: must be at least 1")
    root = Path(shards_dir)
    started = time.perf_counter()
    fresh = not root.exists()
    done = start_shards(
        root, encoders.model_hash, int(encoders.embed_dim), shard_size, source, resume
    )
    if [s.number for s in done] != list(range(len(done))):
        missing = min(set(range(len(done))) - {s.number for s in done})
        raise ShardsError(
            f"{root}: shard {missing} is missing before later complete ones (shards written "
            "out of order, as index.beam_embed does): go on with that program"
        )
    try:
        summary = _embed(items, encoders, root, done, shard_size, batch_size, max_pixels, dedupe)
    except (ValueError, OSError):
        # A source that cannot be read leaves nothing behind (a kill leaves shards to resume).
        if fresh:
            shutil.rmtree(root, ignore_errors=True)
        raise
    finish_shards(root, summary.shards)
    summary.seconds = time.perf_counter() - started
    log.info("%s: %s", root, summary.line())
    return summary


def _embed(
    items: Iterable[SourceImage],
    encoders: EncodersLike,
    root: Path,
    done: list[Shard],
    shard_size: int,
    batch_size: int,
    max_pixels: int,
    dedupe: bool,
) -> Summary:
    summary = Summary(shards=len(done))
    seen: set[str] = set()
    first_of: dict[str, str] = {}  # sha256 -> image_id of the first file with these bytes
    for shard in done:
        seen.update(shard.seen)
        first_of.update({r["sha256"]: r["image_id"] for r in shard.images})
    todo = (item for item in items if item.image_id not in seen)
    original: Originals = first_of.setdefault if dedupe else _itself
    builder = ShardWriter(encoders, root, len(done), batch_size)
    with tqdm(desc="images", unit="img", disable=None) as bar:
        min_side = jpeg_min_side(encoders.manifest)
        for item, facts in prepared(todo, max_pixels, min_side):
            builder.take(item, facts, original)
            bar.update(1)
            if len(builder.seen) >= shard_size:
                count_shard(summary, builder.write())
                builder = ShardWriter(encoders, root, builder.number + 1, batch_size)
        if builder.seen:
            count_shard(summary, builder.write())
    for shard in done:
        count_shard(summary, shard, resumed=True)
    return summary


def _itself(digest: str, image_id: str) -> str:
    """An `Originals` that makes no image a duplicate of another."""
    return image_id


def count_shard(summary: Summary, shard: Shard, *, resumed: bool = False) -> None:
    """Add what `shard` holds to `summary`."""
    summary.indexed += len(shard.images)
    summary.duplicates += len(shard.duplicates)
    summary.skipped.update(s["reason"].split(":", 1)[0] for s in shard.skipped)
    if not resumed:
        summary.shards += 1


def finish_shards(root: Path, count: int) -> None:
    """Record in shards.json that the run is complete with `count` shards, so a reader can
    tell a missing last shard from the end."""
    meta = read_shards_meta(root)
    write_json_atomic(root / META, {**meta, "shards": count})


def _number(path: Path) -> int | None:
    """The shard number of a shard file's name, or None for another file."""
    digits = path.name[6:11]
    return int(digits) if path.name.startswith("shard-") and digits.isdigit() else None


def _check_complete(root: Path, numbers: list[int], meta: dict[str, Any]) -> None:
    """Refuse half-written shards and gaps in the sequence, naming the shard file."""
    for p in sorted(root.glob("shard-*")):
        n = _number(p)
        if n is not None and n not in numbers:
            raise ShardsError(
                f"{p}: half-written shard ({shard_name(n, '.json')}, written last, is missing): "
                "the run that wrote it did not finish; go on with it (--resume) first"
            )
    count = meta.get("shards", max(numbers, default=-1) + 1)
    for n in range(count):
        if n not in numbers:
            raise ShardsError(
                f"{root / shard_name(n, '.json')}: shard {n} of {count} is missing "
                f"({len(numbers)} complete shards there)"
            )
    if len(numbers) > count:
        raise ShardsError(f"{root / META} says {count} shards, {len(numbers)} are there")


def _read_body(path: Path) -> dict[str, Any]:
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ShardsError(f"{path}: not a readable shard file ({e})") from e
    keys = ("images", "seen", "skipped", "duplicates")
    if not isinstance(body, dict) or not all(isinstance(body.get(k), list) for k in keys):
        raise ShardsError(f"{path}: expected an object with the lists {', '.join(keys)}")
    return body


def _load_rows(path: Path, rows: int, dim: int, what: str) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise ShardsError(f"{path}: cannot read the {what} ({e})") from e
    if array.shape != (rows, dim):
        raise ShardsError(
            f"{path}: shape {array.shape}, expected ({rows}, {dim}): its .json lists {rows} "
            f"{what} and shards.json says dim {dim}"
        )
    return array


def read_shards(shards_dir: str | os.PathLike[str], *, gaps: bool = False) -> Iterator[Shard]:
    """The complete shards of `shards_dir`, in order (vectors memory-mapped).

    A half-written shard, a gap in the sequence (or a missing last shard, when shards.json
    has the count), rows that do not match the shard's .json, or a shard of another size
    are refused, naming the file. `gaps` (a run going on) passes over what is missing.
    """
    root = Path(shards_dir)
    meta = read_shards_meta(root)
    dim, size = int(meta["dim"]), int(meta["shard_size"])
    numbers = sorted(n for p in root.glob("shard-*.json") if (n := _number(p)) is not None)
    if not gaps:
        _check_complete(root, numbers, meta)
    for n in numbers:
        path = root / shard_name(n, ".json")
        body = _read_body(path)
        last = n == numbers[-1]
        if len(body["seen"]) > size or (not last and not gaps and len(body["seen"]) != size):
            raise ShardsError(
                f"{path}: {len(body['seen'])} source images, the shards hold {size} each "
                "(shard_size in shards.json)"
            )
        vectors = _load_rows(root / shard_name(n, ".npy"), len(body["images"]), dim, "images")
        n_captions = sum(len(r.get("captions", ())) for r in body["images"])
        captions = _load_rows(root / shard_name(n, ".captions.npy"), n_captions, dim, "captions")
        yield Shard(
            n, vectors, captions, body["images"], body["skipped"], body["duplicates"], body["seen"]
        )


def read_shards_meta(shards_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """shards.json of a shards directory."""
    path = Path(shards_dir) / META
    try:
        meta: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ShardsError(f"{shards_dir}: not a shards directory (no readable {META}: {e})") from e
    if meta.get("format") != FORMAT:
        raise ShardsError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def write_corpus(shards_dir: str | os.PathLike[str], texts: list[str], vectors: np.ndarray) -> None:
    """The caption corpus tied to no image, beside the shards."""
    root = Path(shards_dir)
    _save_npy(root / "corpus.npy", vectors)
    write_json_atomic(root / "corpus.json", texts, indent=None)


def read_corpus(shards_dir: str | os.PathLike[str]) -> tuple[list[str], np.ndarray] | None:
    """The caption corpus written by `write_corpus`, or None."""
    root = Path(shards_dir)
    if not (root / "corpus.json").is_file():
        return None
    texts = json.loads((root / "corpus.json").read_text(encoding="utf-8"))
    return list(texts), np.load(root / "corpus.npy")


@dataclass
class Collected:
    """The contents of a shards directory, ready for `build_index_dir` or `add_to_index`."""

    image_vectors: np.ndarray
    images: list[NewImage]
    caption_vectors: np.ndarray
    captions: list[NewCaption]
    skipped: list[dict[str, Any]]
    duplicates: int
    meta: dict[str, Any]


def collect_shards(
    shards_dir: str | os.PathLike[str],
    *,
    copy_images: bool,
    expected_model_hash: str | None = None,
    vectors: bool = True,
) -> Collected:
    """Read every shard (and the corpus); duplicates become aliases of the image they repeat.
    Holds all vectors (the caller's in-memory index needs them anyway) unless `vectors` is
    False: then the vector arrays are empty. Shards embedded with another model than
    `expected_model_hash`, half-written or missing ones are refused."""
    meta = read_shards_meta(shards_dir)
    if expected_model_hash is not None and meta.get("model_hash") != expected_model_hash:
        raise ShardsError(
            f"{shards_dir} was embedded with the model of hash {meta.get('model_hash')!r}, not "
            f"with this --model_dir's {expected_model_hash!r}: its vectors live in another "
            "space; embed the images again with this model (or build with the model that "
            "made them)"
        )
    dim = int(meta["dim"])
    records: list[dict[str, Any]] = []
    image_vectors, caption_vectors = (
        [np.zeros((0, dim), np.float32)],
        [np.zeros((0, dim), np.float32)],
    )
    skipped: list[dict[str, Any]] = []
    aliases: dict[str, list[str]] = {}
    for shard in read_shards(shards_dir):
        records.extend(shard.images)
        if vectors:
            image_vectors.append(np.asarray(shard.vectors))
            caption_vectors.append(np.asarray(shard.caption_vectors))
        skipped.extend(shard.skipped)
        for d in shard.duplicates:
            aliases.setdefault(d["of"], []).append(d["image_id"])
    images = [
        NewImage(
            r["image_id"],
            Path(r["file"]) if copy_images else None,
            r["width"],
            r["height"],
            decode_meta(r["meta"]) or None,
            tuple(aliases.get(r["image_id"], ())),
            r["file"],
            **capture_of(r),
        )
        for r in records
    ]
    captions = [NewCaption(r["image_id"], t) for r in records for t in r["captions"]]
    corpus = read_corpus(shards_dir)
    if corpus is not None:
        captions += [NewCaption(None, t) for t in corpus[0]]
        if vectors:
            caption_vectors.append(corpus[1])
    return Collected(
        np.concatenate(image_vectors),
        images,
        np.concatenate(caption_vectors),
        captions,
        skipped,
        sum(len(v) for v in aliases.values()),
        meta,
    )


def require_embedded(got: Collected, shards_dir: str | os.PathLike[str]) -> None:
    """Refuse shards in which no image was embedded, naming the first skipped file's reason."""
    if not got.images:
        first = f" (first: {got.skipped[0]['image_id']}: {got.skipped[0]['reason']})"
        raise ValueError(f"{shards_dir}: no image could be embedded{first if got.skipped else ''}")


def _normalized(chunks: Iterator[np.ndarray], what: str) -> Iterator[np.ndarray]:
    for chunk in chunks:
        yield normalize(chunk, what)


def shard_sources(shards_dir: str | os.PathLike[str], dim: int) -> dict[str, VectorSource]:
    """The image and caption vectors of the shards (and the corpus) as streamed sources."""
    n_images = n_captions = 0
    for shard in read_shards(shards_dir):
        n_images += len(shard.vectors)
        n_captions += len(shard.caption_vectors)
    corpus = read_corpus(shards_dir)
    n_captions += 0 if corpus is None else len(corpus[1])

    def images() -> Iterator[np.ndarray]:
        return _normalized((s.vectors for s in read_shards(shards_dir)), "image vectors")

    def captions() -> Iterator[np.ndarray]:
        def raw() -> Iterator[np.ndarray]:
            for s in read_shards(shards_dir):
                if len(s.caption_vectors):
                    yield s.caption_vectors
            extra = read_corpus(shards_dir)
            if extra is not None and len(extra[1]):
                yield extra[1]

        return _normalized(raw(), "caption vectors")

    return {
        "images": ChunkSource(n_images, dim, images),
        "captions": ChunkSource(n_captions, dim, captions),
    }
