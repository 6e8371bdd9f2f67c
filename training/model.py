"""The VSE++ image and text encoders (Keras 3 functional models) and their pairing."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from training.backbones import Backbone, build_backbone
from training.config import ModelConfig
from training.text import Vocabulary

log = logging.getLogger(__name__)


class L2Normalize(keras.layers.Layer):
    """Row-wise L2 normalisation, always in float32 (mixed precision keeps norms exact)."""

    def __init__(self, **kwargs: object) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return tf.math.l2_normalize(tf.cast(x, tf.float32), axis=-1)


class Abs(keras.layers.Layer):
    """Absolute value: order embeddings live in the positive orthant."""

    def call(self, x: tf.Tensor) -> tf.Tensor:
        return tf.abs(x)


GRU_LOOPS = ("hoisted", "keras")


@keras.saving.register_keras_serializable(package="vsepp")
class HoistedGRU(keras.layers.GRU):
    """keras.layers.GRU with its input projection hoisted out of the time loop.

    The same weights, variables and maths as the Keras GRU (reset_after=True; a caption's
    state stops at its last token), but x_t @ W for every step is one [B*T, D] x [D, 3U]
    matmul before the loop, which then holds the recurrent matmul alone: the loop's one
    matmul a step is [B, U] x [U, 3U] instead of two. tf.foldl over the time-major steps,
    masked steps keep their state, so any caption width traces once. Layers that return
    sequences or run backwards (stacked and bidirectional GRUs) take Keras' own loop.
    """

    def inner_loop(
        self,
        sequences: tf.Tensor,
        initial_state: list[tf.Tensor],
        mask: tf.Tensor | None,
        training: bool = False,
    ) -> tuple[tf.Tensor, tf.Tensor, list[tf.Tensor]]:
        cell = self.cell
        if (
            not cell.reset_after
            or not cell.use_bias
            or self.return_sequences
            or self.go_backwards
            or cell.dropout
            or cell.recurrent_dropout
        ):
            return super().inner_loop(sequences, initial_state, mask, training)
        dtype = sequences.dtype
        recurrent = tf.cast(cell.recurrent_kernel, dtype)
        bias = tf.cast(cell.bias, dtype)
        if mask is None:
            mask = tf.ones(tf.shape(sequences)[:2], tf.bool)
        h0 = initial_state[0] if isinstance(initial_state, (list, tuple)) else initial_state
        # Time-major input projections of every step at once (input bias included).
        xw = tf.einsum("btd,dg->tbg", sequences, tf.cast(cell.kernel, dtype)) + bias[0]
        keep = tf.transpose(tf.cast(mask, tf.bool))[:, :, tf.newaxis]  # [T, B, 1]

        def step(h: tf.Tensor, inputs: tuple[tf.Tensor, tf.Tensor]) -> tf.Tensor:
            x_t, keep_t = inputs
            x_z, x_r, x_h = tf.split(x_t, 3, axis=-1)
            inner = tf.matmul(h, recurrent) + bias[1]
            r_z, r_r, r_h = tf.split(inner, 3, axis=-1)
            z = tf.sigmoid(x_z + r_z)
            r = tf.sigmoid(x_r + r_r)
            new = z * h + (1 - z) * tf.tanh(x_h + r * r_h)
            return tf.where(keep_t, new, h)

        h = tf.foldl(step, (xw, keep), initializer=tf.cast(h0, dtype))
        return h, h, [h]


def _head(x: keras.KerasTensor, cfg: ModelConfig, name: str) -> keras.KerasTensor:
    """Linear projection to the joint space, then the paper's norm/abs options."""
    in_dim = int(x.shape[-1])
    # Xavier-uniform as the original's init_weights: r = sqrt(6) / sqrt(in + out).
    r = float(np.sqrt(6.0) / np.sqrt(in_dim + cfg.joint_space))
    x = keras.layers.Dense(
        cfg.joint_space,
        kernel_initializer=keras.initializers.RandomUniform(-r, r),
        bias_initializer="zeros",
        name=f"{name}_fc",
    )(x)
    x = keras.layers.Activation("linear", dtype="float32", name=f"{name}_f32")(x)
    if not cfg.no_imgnorm:
        x = L2Normalize(name=f"{name}_norm")(x)
    if cfg.use_abs:
        x = Abs(name=f"{name}_abs")(x)
    return x


def build_image_encoder(cfg: ModelConfig, backbone: Backbone | None = None) -> keras.Model:
    """Normalised image [B,S,S,3] (or precomputed feature [B,F]) -> joint embedding [B,D]."""
    if cfg.precomp_dim > 0:
        # The paper's *_precomp encoder: projection straight from the cached CNN features.
        inputs = keras.Input((cfg.precomp_dim,), name="feature")
        return keras.Model(inputs, _head(inputs, cfg, "img"), name="image_encoder")
    if backbone is None:
        backbone = build_backbone(cfg.cnn, cfg.cnn_weights, cfg.image_size)
    inputs = keras.Input((cfg.image_size, cfg.image_size, 3), name="image")
    from_scratch = cfg.cnn == "tiny"
    backbone.model.trainable = cfg.finetune or from_scratch
    # A pretrained backbone keeps its batch-norm statistics even while fine-tuned (the
    # batches are too small to re-estimate them); the tiny CNN learns its own.
    feats = backbone.model(inputs, training=None if from_scratch else False)
    feats = L2Normalize(name="cnn_norm")(feats)
    return keras.Model(inputs, _head(feats, cfg, "img"), name="image_encoder")


def build_text_encoder(cfg: ModelConfig, word_vectors: np.ndarray | None = None) -> keras.Model:
    """Token ids [B,T] (0 = padding) -> joint embedding [B,D] from the last valid GRU state."""
    if cfg.vocab_size <= 4:
        raise ValueError("ModelConfig.vocab_size must be set from the vocabulary")
    if cfg.gru_loop not in GRU_LOOPS:
        raise ValueError(f"ModelConfig.gru_loop must be one of {GRU_LOOPS}, got {cfg.gru_loop!r}")
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(
        cfg.vocab_size,
        cfg.word_dim,
        embeddings_initializer=keras.initializers.RandomUniform(-0.1, 0.1),
        mask_zero=True,  # the GRU then stops at each caption's true length
        name="word_embedding",
    )(tokens)
    for i in range(cfg.num_layers):
        last = i == cfg.num_layers - 1
        gru_class = HoistedGRU if cfg.gru_loop == "hoisted" else keras.layers.GRU
        gru = gru_class(cfg.joint_space, return_sequences=not last, name=f"gru{i}")
        if cfg.bidirectional:
            x = keras.layers.Bidirectional(
                gru, merge_mode="ave" if last else "concat", name=f"bigru{i}"
            )(x)
        else:
            x = gru(x)
    x = keras.layers.Activation("linear", dtype="float32", name="txt_f32")(x)
    x = L2Normalize(name="txt_norm")(x)
    if cfg.use_abs:
        x = Abs(name="txt_abs")(x)
    model = keras.Model(tokens, x, name="text_encoder")
    if word_vectors is not None:
        model.get_layer("word_embedding").embeddings.assign(word_vectors)
    return model


@dataclass
class VSEModel:
    """The two encoders trained together."""

    config: ModelConfig
    image_encoder: keras.Model
    text_encoder: keras.Model

    @classmethod
    def build(cls, cfg: ModelConfig, word_vectors: np.ndarray | None = None) -> VSEModel:
        return cls(cfg, build_image_encoder(cfg), build_text_encoder(cfg, word_vectors))

    @property
    def trainable_variables(self) -> list[tf.Variable]:
        return [*self.image_encoder.trainable_variables, *self.text_encoder.trainable_variables]

    @property
    def variables(self) -> list[tf.Variable]:
        """Every weight of both encoders, trainable or not."""
        return [*self.image_encoder.weights, *self.text_encoder.weights]

    def set_backbone_trainable(self, trainable: bool) -> None:
        """Switch fine-tuning of a pretrained backbone on or off (the paper's second stage).

        Its batch-norm layers stay frozen, which in Keras also keeps them in inference mode:
        a functional model's outer `training=True` would override the `training=False` its
        backbone was built with, and small batches would overwrite ImageNet's statistics.
        """
        for layer in self.image_encoder.layers:
            if isinstance(layer, keras.Model):
                layer.trainable = trainable
                if trainable and self.config.cnn != "tiny":
                    for sub in _all_layers(layer):
                        if isinstance(sub, keras.layers.BatchNormalization):
                            sub.trainable = False

    def embed(
        self, image_input: tf.Tensor, tokens: tf.Tensor, training: bool
    ) -> tuple[tf.Tensor, tf.Tensor]:
        return (
            self.image_encoder(image_input, training=training),
            self.text_encoder(tokens, training=training),
        )


def _all_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every layer inside `model`, nested models included."""
    out: list[keras.layers.Layer] = []
    for layer in model.layers:
        out.append(layer)
        if isinstance(layer, keras.Model):
            out.extend(_all_layers(layer))
    return out


def load_word_vectors(path: str | Path, vocab: Vocabulary, dim: int) -> np.ndarray:
    """Embedding matrix initialised from a GloVe-format text file (word v1 v2 ...).

    Words missing from the file keep the paper's uniform [-0.1, 0.1] initialisation.
    """
    rng = np.random.default_rng(0)
    matrix = rng.uniform(-0.1, 0.1, (len(vocab), dim)).astype(np.float32)
    found = 0
    p = Path(path)
    with p.open(encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.rstrip().split(" ")
            if len(parts) < 2:
                continue
            idx = vocab.id_of(parts[0])
            if idx <= 3 and parts[0] not in vocab.tokens[:4]:
                continue
            if len(parts) - 1 != dim:
                raise ValueError(
                    f"{p}:{lineno}: vector of {len(parts) - 1} values, expected --word_dim {dim}"
                )
            matrix[idx] = np.asarray(parts[1:], dtype=np.float32)
            found += 1
    matrix[0] = 0.0
    log.info("word vectors: %d of %d vocabulary words found in %s", found, len(vocab), p)
    return matrix
