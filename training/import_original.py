"""Import a VSE++ authors' checkpoint as a model directory: `python -m training.import_original`.

    python -m training.import_original --vocab vocab/f30k_vocab.pkl \\
        --checkpoint runs/f30k_vse++_resnet_finetune/model_best.pth.tar \\
        --save_model_path runs/f30k_vsepp

writes the directory `training.export` writes (docs/CONTRACTS.md), so `index.*`,
`training.inference` and the service load it as they load a trained one. Its manifest
records where it came from and that it needs the original's pipelines: torchvision's
resize 256 / centre crop 224 / ImageNet mean-std, and NLTK-Treebank tokens with the
authors' vocabulary. Nothing in the files is run (`training.original.checkpoint`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.backbones import Backbone
from training.config import ModelConfig
from training.export import FeatureEncoderModule, TextPipeline, export_model
from training.images import ImageConfig
from training.model import build_image_encoder, build_text_encoder
from training.original.checkpoint import CheckpointError, read_checkpoint
from training.original.tokenizer import tf_tokenize
from training.original.vocab import ImportedVocab, read_vocab
from training.original.weights import (
    WeightMismatchError,
    cnn_state,
    infer_spec,
    load_backbone,
    load_projection,
    load_text,
    text_dims,
)
from training.tv_backbones import RESNET_LAYERS, VGG_CONFIGS, ResNetSpec, build_tv, standard_spec
from vsepp.cli import UsageError, add_log_level, program, setup_logging
from vsepp.model_dir import MODEL_FORMAT

log = logging.getLogger(__name__)

SUPPORTED_CNNS = (*RESNET_LAYERS, *VGG_CONFIGS)
# The original README's note on vocab.tar (its issue #29).
VOCAB_WARNING = (
    "The vocabulary was originally built using all sets (including test set captions); "
    "see fartashf/vsepp issue #29. Test-set words are in it, so its test scores are not "
    "strictly held out."
)
IMAGE_PIPELINE = {
    "name": "torchvision",
    "resize_shorter": 256,
    "longer_side": "int(256 * long / short)",
    "center_crop": 224,
    "crop_corner": "round((side - 224) / 2), half to even",
    "jpeg": "decoded at full size",
    "scale": "[0, 1]",
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
}
TEXT_PIPELINE = (
    "original: ASCII lower-case (Python 2's str.lower), NLTK Treebank tokens as "
    "word_tokenize gives for one sentence, framed by <start> ... <end>, unknown words "
    "<unk>, ids of the authors' vocabulary"
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m training.import_original",
        description="Import a released VSE++ checkpoint (fartashf/vsepp runs.tar) and its "
        "vocabulary (vocab.tar) as a model directory for indexing, evaluation and serving.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, type=Path, help="model_best.pth.tar")
    p.add_argument("--vocab", required=True, type=Path, help="the run's DATA_vocab.pkl")
    p.add_argument(
        "--save_model_path", "--model_dir", dest="model_dir", required=True, type=Path,
        help="model directory to write",
    )  # fmt: skip
    p.add_argument(
        "--save_backbone_weights",
        type=Path,
        default=None,
        help="also write the backbone's Keras weights (NAME.weights.h5), for "
        "training.train --cnn resnet152_tv --cnn_weights NAME.weights.h5",
    )
    add_log_level(p)
    return p.parse_args(argv)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


def unpack(
    checkpoint: Any, path: Path
) -> tuple[Mapping[str, Any], Mapping[str, Any], dict[str, Any]]:
    """(image state dict, text state dict, opt as a dict) of a checkpoint's object."""
    if not isinstance(checkpoint, dict) or "model" not in checkpoint or "opt" not in checkpoint:
        raise CheckpointError(f"{path}: not a VSE++ checkpoint (no 'model' and 'opt')")
    model, opt = checkpoint["model"], checkpoint["opt"]
    if not (isinstance(model, list | tuple) and len(model) == 2):
        raise CheckpointError(f"{path}: 'model' is not [image state dict, text state dict]")
    if not isinstance(opt, argparse.Namespace | dict):
        raise CheckpointError(f"{path}: 'opt' is a {type(opt).__name__}, not the options")
    options = vars(opt) if isinstance(opt, argparse.Namespace) else dict(opt)
    states = []
    for name, state in zip(("image", "text"), model, strict=True):
        if not isinstance(state, Mapping) or not all(
            isinstance(v, np.ndarray) for v in state.values()
        ):
            raise CheckpointError(f"{path}: the {name} state dict is not a dict of tensors")
        states.append(state)
    return states[0], states[1], {str(k): _jsonable(v) for k, v in options.items()}


def tv_name(cnn_type: str, spec: Any) -> str:
    """The backbone's name (`resnet152_tv`), or a description when the checkpoint's network
    is not the standard one of its cnn_type (a test's tiny net)."""
    if spec == standard_spec(cnn_type):
        return f"{cnn_type}_tv"
    if isinstance(spec, ResNetSpec):
        return f"resnet_tv(block={spec.block}, layers={list(spec.layers)}, width={spec.width})"
    return f"vgg_tv(config={list(spec.config)}, fc={spec.fc})"


def import_checkpoint(
    checkpoint_path: Path, vocab_path: Path, model_dir: Path, backbone_out: Path | None = None
) -> Path:
    """Read, check and convert everything first, then write the model directory."""
    t0 = time.perf_counter()
    checkpoint = read_checkpoint(checkpoint_path)
    vocab = read_vocab(vocab_path)
    image_state, text_state, opt = unpack(checkpoint, checkpoint_path)
    vocab_size, word_dim, hidden, layers = text_dims(text_state)
    if vocab_size != len(vocab):
        raise UsageError(
            f"{vocab_path} has {len(vocab)} words but the checkpoint's embedding has "
            f"{vocab_size} rows: use the vocabulary of the run's data_name "
            f"({opt.get('data_name')!r})"
        )
    measure = str(opt.get("measure", "cosine"))
    if measure not in ("cosine", "order"):
        raise UsageError(f"{checkpoint_path}: unsupported measure {measure!r}")
    precomp = not any(k.startswith("cnn.") for k in image_state)
    cnn_type = str(opt.get("cnn_type", ""))
    common = dict(
        cnn_weights="none", image_size=224, resize_size=256, joint_space=hidden,
        word_dim=word_dim, num_layers=layers, vocab_size=vocab_size,
        no_imgnorm=bool(opt.get("no_imgnorm", False)), measure=measure,
        use_abs=bool(opt.get("use_abs", False)),
    )  # fmt: skip
    # torchvision's Resize/CenterCrop size rules, and JPEGs decoded whole as PIL does.
    image_cfg = ImageConfig(
        224, 256, "torch", hflip=False, size_rule="torchvision", jpeg_draft=False
    )
    extra_image: dict[str, Any] = {"pipeline": IMAGE_PIPELINE}
    image_module = None
    backbone_model = None
    if precomp:
        if "fc.weight" not in image_state:
            raise UsageError(f"{checkpoint_path}: the image state dict has neither cnn.* nor fc.*")
        feature_dim = int(image_state["fc.weight"].shape[1])
        cfg = ModelConfig(cnn="precomp", precomp_dim=feature_dim, **common)  # type: ignore[arg-type]
        image_encoder = build_image_encoder(cfg)
        image_module = FeatureEncoderModule(image_encoder, feature_dim)
        extra_image = {"input": "features", "feature_dim": feature_dim, "pipeline": "precomputed"}
    else:
        if cnn_type not in SUPPORTED_CNNS:
            raise UsageError(
                f"{checkpoint_path}: unsupported cnn_type {cnn_type!r}; the original's "
                f"full-image runs use one of {', '.join(SUPPORTED_CNNS)}"
            )
        state = cnn_state(image_state)
        spec = infer_spec(state)
        if type(spec) is not type(standard_spec(cnn_type)):
            raise UsageError(
                f"{checkpoint_path}: opt.cnn_type is {cnn_type} but the weights are a "
                f"{type(spec).__name__[:-4]}"
            )
        backbone_model = build_tv(spec, 224)
        load_backbone(backbone_model, state)
        name = tv_name(cnn_type, spec)
        cfg = ModelConfig(cnn=name, **common)  # type: ignore[arg-type]
        backbone = Backbone(backbone_model, "torch", spec.feature_dim)
        image_encoder = build_image_encoder(cfg, backbone)
    load_projection(image_encoder, image_state)
    text_encoder = build_text_encoder(cfg)
    load_text(text_encoder, text_state)
    pipeline = _text_pipeline(vocab)
    source = {
        "from": "fartashf/vsepp released checkpoint",
        "checkpoint": checkpoint_path.name,
        "checkpoint_sha256": sha256_file(checkpoint_path),
        "vocab": vocab_path.name,
        "vocab_sha256": sha256_file(vocab_path),
        "opt": opt,
        "epoch": _jsonable(checkpoint.get("epoch")),
        "best_rsum": _jsonable(checkpoint.get("best_rsum")),
        "warning": VOCAB_WARNING,
    }
    extra = {
        "image": extra_image,
        "text": {"pipeline_description": TEXT_PIPELINE},
        "imported": source,
        "training": {"data_name": opt.get("data_name"), "imported": True},
    }
    final = export_model(
        model_dir, image_encoder, text_encoder, None, cfg, image_cfg, extra,
        text_pipeline=pipeline, image_module=image_module,
    )  # fmt: skip
    if backbone_out is not None and backbone_model is not None:
        backbone_out.parent.mkdir(parents=True, exist_ok=True)
        backbone_model.save_weights(str(backbone_out))
        log.info("wrote the backbone's weights to %s", backbone_out)
    log.info("imported %s in %.1fs into %s", checkpoint_path, time.perf_counter() - t0, final)
    return final


def _text_pipeline(vocab: ImportedVocab) -> TextPipeline:
    return TextPipeline("original", vocab.words, vocab.unk, vocab.start, vocab.end, tf_tokenize)


@program
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_level)
    for flag, path in (("--checkpoint", args.checkpoint), ("--vocab", args.vocab)):
        if not path.is_file():
            raise UsageError(f"{flag} {path}: no such file")
    weights_out = args.save_backbone_weights
    if weights_out is not None and not weights_out.name.endswith(".weights.h5"):
        raise UsageError(f"--save_backbone_weights {weights_out}: the name must end in .weights.h5")
    if (args.model_dir / "manifest.json").exists():
        manifest = json.loads((args.model_dir / "manifest.json").read_text(encoding="utf-8"))
        if manifest.get("format") != MODEL_FORMAT:
            raise UsageError(f"{args.model_dir} holds something other than a model directory")
    try:
        import_checkpoint(args.checkpoint, args.vocab, args.model_dir, args.save_backbone_weights)
    except WeightMismatchError as e:
        raise UsageError(f"{args.checkpoint}: {e}") from e
    print(f"imported {args.checkpoint} into {args.model_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
