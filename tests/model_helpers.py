"""An untrained exported model, in seconds: for tests about the path of the vectors, not
their quality (agreement between two ways of computing them)."""

from __future__ import annotations

from pathlib import Path


def export_untrained(out: Path, *, cnn: str = "tiny", size: int = 64, dim: int = 32) -> Path:
    """An untrained VSE++ model (weights none) exported as training does, to `out`."""
    from training.backbones import preprocess_for
    from training.config import ModelConfig
    from training.export import export_model
    from training.images import ImageConfig
    from training.model import VSEModel
    from training.text import Vocabulary

    vocab = Vocabulary.build(["a red ball on the grass", "a blue square"] * 4, min_count=1)
    cfg = ModelConfig(cnn=cnn, cnn_weights="none", image_size=size, resize_size=size,
                      joint_space=dim, word_dim=8, vocab_size=len(vocab))  # fmt: skip
    model = VSEModel.build(cfg)
    export_model(out, model.image_encoder, model.text_encoder, vocab, cfg,
                 ImageConfig(size, size, preprocess_for(cnn)))  # fmt: skip
    return out
