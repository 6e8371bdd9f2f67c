"""Configuration of the model and of a training run: filled by the CLI, recorded in manifests."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from vsepp.evaluation import Measure

# decoupled: Adam's decoupled decay of every variable; l2: the seed's L2 penalty on the
# non-bias weights, added to the loss.
WEIGHT_DECAY_TYPES = ("decoupled", "l2")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the two encoders (the paper's defaults)."""

    cnn: str = "resnet152"  # image backbone (training.backbones.BACKBONES)
    cnn_weights: str = "imagenet"  # "imagenet", "none" or a weights file
    image_size: int = 224  # crop fed to the backbone
    resize_size: int = 256  # shorter side before cropping
    joint_space: int = 1024  # dimension of the joint embedding
    word_dim: int = 300  # word embedding size
    num_layers: int = 1  # GRU layers
    bidirectional: bool = False  # average forward and backward GRU states
    vocab_size: int = 0  # set from the vocabulary
    no_imgnorm: bool = False  # VSE0 ablation: no L2 norm after the image projection
    measure: Measure = "cosine"  # "cosine" or "order" (order embeddings)
    use_abs: bool = False  # absolute value of the embeddings (order embeddings)
    finetune: bool = False  # train the backbone too
    precomp_dim: int = 0  # > 0: the image side reads precomputed features of this size
    # "keras" (Keras' GRU loop), "hoisted" (training.model.HoistedGRU) or "auto" (the CLI's
    # default; training.precision, decided by the Trainer before it builds the model)
    gru_loop: str = "keras"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and bookkeeping of one run (the paper's schedule by default)."""

    epochs: int = 30  # passes over the training pairs
    batch_size: int = 128  # global batch (split over replicas)
    learning_rate: float = 2e-4  # Adam
    lr_update: int = 15  # multiply the learning rate by 0.1 every this many epochs
    grad_clip: float = 2.0  # global-norm gradient clipping (0: off)
    weight_decay: float = 0.0  # weight decay, of the kind weight_decay_type names
    weight_decay_type: str = "decoupled"  # "decoupled" (AdamW) or "l2" (the seed's loss term)
    margin: float = 0.2  # hinge margin
    max_violation: bool = True  # VSE++ hardest negative (else VSE0 sum of violations)
    max_violation_after: int = 0  # epochs of sum-of-violations warm-up before max violation
    finetune_after: int = -1  # epoch at which backbone fine-tuning starts (-1: never / at 0)
    val_step: int = 0  # also validate every this many steps (0: once per epoch)
    checkpoint_every: int = 200  # steps between resumable checkpoints
    seed: int = 0  # seeds shuffling and initialisation
    prefetch_size: int | None = None  # tf.data prefetch buffer (None: autotune)
    cache: bool = False  # cache decoded images in memory
    strategy: str = "default"  # "default", "mirrored" or "multiworker"
    # "off", "bfloat16", "float16" or "auto" (the CLI's default; training.precision, decided
    # by the Trainer, which records the choice)
    mixed_precision: str = "off"
    jit_compile: bool = False  # XLA-compile the training step
    bucket_by_length: bool = False  # batch captions of similar length together
    collapse_patience: int = 200  # steps at the collapse loss before the trainer says so

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
