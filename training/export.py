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
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from training.config import ModelConfig
from training.images import ImageConfig, eval_image_transform, eval_images_from_bytes
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


class TextEncoderModule(tf.Module):
    """Raw caption strings in, joint-space embeddings and in-vocabulary word counts out."""

    def __init__(self, encoder: keras.Model, vocab: Vocabulary) -> None:
        super().__init__()
        self.encoder = encoder
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(vocab.tokens), tf.range(len(vocab), dtype=tf.int32)
            ),
            default_value=UNK,
        )

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def encode(self, texts: tf.Tensor) -> dict[str, tf.Tensor]:
        ids = tf.ragged.map_flat_values(self.table.lookup, tf_tokenize(texts))
        known = tf.reduce_sum(tf.cast(ids != UNK, tf.int32), axis=1)
        n = tf.shape(texts)[0]
        framed = tf.concat([tf.fill([n, 1], START), ids, tf.fill([n, 1], END)], axis=1).to_tensor(
            default_value=0
        )
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
    vocab: Vocabulary,
    model_cfg: ModelConfig,
    image_cfg: ImageConfig,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the exported encoders under MODEL_DIR/exports/ and switch manifest.json to them."""
    root = Path(model_dir)
    exports = root / "exports"
    exports.mkdir(parents=True, exist_ok=True)
    name = _next_export_name(exports)
    final = exports / name
    with atomic_directory(final) as tmp:
        tf.saved_model.save(
            ImageEncoderModule(image_encoder, image_cfg), str(tmp / "image_encoder")
        )
        tf.saved_model.save(TextEncoderModule(text_encoder, vocab), str(tmp / "text_encoder"))
        vocab.save(tmp / "vocab.json")
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
            "jpeg_min_side": image_cfg.resize_size,
        },
        "text": {
            "vocab_size": len(vocab),
            "word_dim": model_cfg.word_dim,
            "num_layers": model_cfg.num_layers,
            "bidirectional": model_cfg.bidirectional,
        },
        "model_config": model_cfg.to_dict(),
        "content_hash": hash_tree(final),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        **(extra or {}),
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
