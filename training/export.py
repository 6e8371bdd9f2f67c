"""Export the trained encoders as a self-contained model directory (see docs/CONTRACTS.md).

Each encoder becomes a TensorFlow SavedModel with its preprocessing inside: the image encoder
decodes, resizes, crops and normalises; the text encoder tokenises with the saved vocabulary.
Loading them needs TensorFlow only. The directory is switched atomically: a new export is
written under `exports/`, then `manifest.json` (renamed into place last) points to it.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from training.config import ModelConfig
from training.images import (
    ImageConfig,
    eval_image_transform,
    eval_images_from_bytes,
    jpeg_min_side,
)
from training.model import L2Normalize
from training.text import END, START, UNK, Vocabulary, tf_tokenize
from vsepp.atomic import atomic_directory, write_json_atomic
from vsepp.model_dir import MODEL_FORMAT, hash_tree

log = logging.getLogger(__name__)


class ImageEncoderModule(tf.Module):
    """Image bytes or uint8 arrays in, joint-space embeddings out."""

    def __init__(self, encoder: keras.Model, image_cfg: ImageConfig) -> None:
        super().__init__()
        self.encoder = encoder
        self._cfg = image_cfg
        size = image_cfg.image_size
        self._spec = tf.TensorSpec([size, size, 3], tf.float32)

    def _embed(self, images: tf.Tensor) -> tf.Tensor:
        return tf.cast(self.encoder(images, training=False), tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def encode_bytes(self, blobs: tf.Tensor) -> tf.Tensor:
        return self._embed(eval_images_from_bytes(blobs, self._cfg))

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
    def encode_array(self, images: tf.Tensor) -> tf.Tensor:
        prepared = tf.map_fn(
            lambda im: eval_image_transform(im, self._cfg), images, fn_output_signature=self._spec
        )
        return self._embed(prepared)


class FeatureEncoderModule(tf.Module):
    """Precomputed CNN features in, joint-space embeddings out (an imported `*_precomp` run,
    whose features cannot be computed from image files)."""

    def __init__(self, encoder: keras.Model, feature_dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self._dim = feature_dim

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32)])
    def encode_features(self, features: tf.Tensor) -> tf.Tensor:
        return tf.cast(self.encoder(features, training=False), tf.float32)


@dataclass(frozen=True)
class TextPipeline:
    """How a caption becomes token ids: the tokeniser, the words by id and the reserved ids.

    "project": training.text's rules and Vocabulary; "original": the VSE++ authors' (NLTK
    Treebank tokens, their vocabulary's ids), for imported models.
    """

    name: str
    words: list[str]
    unk: int
    start: int
    end: int
    tokenize: Callable[[Any], Any]  # tf.string [n] -> tf.RaggedTensor of tokens

    @classmethod
    def project(cls, vocab: Vocabulary) -> TextPipeline:
        return cls("project", vocab.tokens, UNK, START, END, tf_tokenize)


class TextEncoderModule(tf.Module):
    """Raw caption strings in, joint-space embeddings and in-vocabulary word counts out."""

    def __init__(self, encoder: keras.Model, pipeline: TextPipeline) -> None:
        super().__init__()
        self.encoder = encoder
        self._pipeline = pipeline
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(pipeline.words), tf.range(len(pipeline.words), dtype=tf.int32)
            ),
            default_value=pipeline.unk,
        )

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def encode(self, texts: tf.Tensor) -> dict[str, tf.Tensor]:
        p = self._pipeline
        ids = tf.ragged.map_flat_values(self.table.lookup, p.tokenize(texts))
        known = tf.reduce_sum(tf.cast(ids != p.unk, tf.int32), axis=1)
        n = tf.shape(texts)[0]
        framed = tf.concat(
            [tf.fill([n, 1], p.start), ids, tf.fill([n, 1], p.end)], axis=1
        ).to_tensor(default_value=0)
        embedding = tf.cast(self.encoder(framed, training=False), tf.float32)
        return {"embedding": embedding, "known_tokens": known}


def compose_precomp_encoder(backbone: keras.Model, head: keras.Model) -> keras.Model:
    """Full image encoder for a projection trained on precomputed features: CNN, the L2 norm
    the stored features had (training.feature_store), head."""
    feats = L2Normalize(name="cnn_norm")(backbone.output)
    return keras.Model(backbone.input, head(feats), name="image_encoder")


def export_model(
    model_dir: str | os.PathLike[str],
    image_encoder: keras.Model,
    text_encoder: keras.Model,
    vocab: Vocabulary | None,
    model_cfg: ModelConfig,
    image_cfg: ImageConfig,
    extra: dict[str, Any] | None = None,
    *,
    text_pipeline: TextPipeline | None = None,
    image_module: tf.Module | None = None,
) -> Path:
    """Write the exported encoders under MODEL_DIR/exports/ and switch manifest.json to them.

    `text_pipeline` (default: the project's, from `vocab`) and `image_module` (default: the
    image-file encoder of `image_cfg`) are for imported models; `extra["image"]` and
    `extra["text"]` add fields to the manifest's sections.
    """
    if text_pipeline is None and vocab is None:
        raise ValueError("export_model needs a vocabulary or a text pipeline")
    pipeline = text_pipeline or TextPipeline.project(vocab)  # type: ignore[arg-type]
    extra = dict(extra or {})
    image_extra = extra.pop("image", {})
    text_extra = extra.pop("text", {})
    root = Path(model_dir)
    exports = root / "exports"
    exports.mkdir(parents=True, exist_ok=True)
    name = _next_export_name(exports)
    final = exports / name
    with atomic_directory(final) as tmp:
        tf.saved_model.save(
            image_module or ImageEncoderModule(image_encoder, image_cfg), str(tmp / "image_encoder")
        )
        tf.saved_model.save(TextEncoderModule(text_encoder, pipeline), str(tmp / "text_encoder"))
        if vocab is not None and pipeline.name == "project":
            vocab.save(tmp / "vocab.json")
        else:
            write_json_atomic(
                tmp / "vocab.json", {"pipeline": pipeline.name, "words": pipeline.words}
            )
    manifest = {
        "format": MODEL_FORMAT,
        "export": f"exports/{name}",
        "embed_dim": model_cfg.joint_space,
        "cnn": model_cfg.cnn,
        "measure": model_cfg.measure,
        "image": {
            "image_size": image_cfg.image_size,
            "resize_size": image_cfg.resize_size,
            "preprocess": image_cfg.preprocess,
            # The decoder reads large JPEGs at the DCT scale this side allows (eval_view).
            "jpeg_min_side": jpeg_min_side(image_cfg),
            **image_extra,
        },
        "text": {
            "vocab_size": len(pipeline.words),
            "word_dim": model_cfg.word_dim,
            "num_layers": model_cfg.num_layers,
            "bidirectional": model_cfg.bidirectional,
            "pipeline": pipeline.name,
            **text_extra,
        },
        "model_config": model_cfg.to_dict(),
        "content_hash": hash_tree(final),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **extra,
    }
    write_json_atomic(root / "manifest.json", manifest)
    _remove_old_exports(exports, keep=name)
    log.info("exported encoders to %s", final)
    return final


def _next_export_name(exports: Path) -> str:
    numbers = [int(p.name) for p in exports.iterdir() if p.name.isdigit()]
    return f"{max(numbers, default=0) + 1:04d}"


def _remove_old_exports(exports: Path, keep: str) -> None:
    for p in exports.iterdir():
        # Hidden entries are atomic_directory's leftovers of a killed export.
        if p.name != keep and (p.name.isdigit() or p.name.startswith(".")):
            shutil.rmtree(p, ignore_errors=True)
