"""Train VSE++: `python -m training.train` with the seed's flags (see --help)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

from training.backbones import BACKBONES, preprocess_for
from training.cli import add_data_args, add_model_args
from training.config import WEIGHT_DECAY_TYPES, ModelConfig, TrainConfig
from training.feature_store import load_features
from training.images import TRAIN_TRANSFORMS, ImageConfig
from training.model import load_word_vectors
from training.precision import GRU_LOOP_CHOICES, MIXED_PRECISION_CHOICES
from training.text import Vocabulary
from training.trainer import TrainData, Trainer
from vsepp.cli import add_model_dir, program, setup_logging
from vsepp.datasets import SplitData
from vsepp.datasets.args import load_split_from_args
from vsepp.evaluation import format_metrics

log = logging.getLogger(__name__)

# The original validates COCO on the first 1,000 val images (5,000 captions).
COCO_VAL_IMAGES = 1000


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m training.train",
        description="Train the VSE++ image and text encoders and export the best epoch.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_data_args(p, fold_restval=True)
    p.add_argument(
        "--train_imgs_file_path",
        required=True,
        help="training split: a split file, or a split name for Karpathy JSON",
    )
    p.add_argument(
        "--val_imgs_file_path",
        required=True,
        help="validation split: a split file, or a split name for Karpathy JSON",
    )
    add_model_dir(
        p,
        "--save_model_path",
        help="model directory to write: exported encoders, manifest, checkpoints "
        "(--save_model_path is the seed's name)",
    )
    add_model_args(p)
    p.add_argument(
        "--cnn_weights",
        default="imagenet",
        help="backbone weights: imagenet, none (random), or a weights file",
    )
    p.add_argument("--finetune", action="store_true", help="train the backbone too")
    p.add_argument(
        "--finetune_after",
        type=int,
        default=-1,
        help="start fine-tuning the backbone at this epoch (-1: see --finetune)",
    )
    p.add_argument(
        "--precomp_features",
        default=None,
        help="directory of precomputed backbone features (python -m training.features)",
    )
    p.add_argument(
        "--word_vectors", default=None, help="GloVe-format text file to initialise word embeddings"
    )
    p.add_argument(
        "--vocab_min_count",
        type=int,
        default=4,
        help="keep training words seen at least this often",
    )
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=30)
    g.add_argument("--learning_rate", type=float, default=2e-4)
    g.add_argument(
        "--lr_update",
        "--decay_rate",
        type=int,
        default=15,
        dest="lr_update",
        help="multiply the learning rate by 0.1 every this many epochs",
    )
    g.add_argument(
        "--grad_clip",
        "--clip_val",
        type=float,
        default=2.0,
        dest="grad_clip",
        help="clip gradients to this global norm (0: off)",
    )
    g.add_argument(
        "--weight_decay",
        type=float,
        default=0.0,
        help="weight decay; what it means is --weight_decay_type's choice",
    )
    g.add_argument(
        "--weight_decay_type",
        choices=WEIGHT_DECAY_TYPES,
        default="decoupled",
        help="decoupled: Adam's decoupled decay (AdamW) of every variable, w -= lr * wd * w "
        "each step; l2: the seed's meaning, wd * sum(w**2) / 2 over the non-bias weights "
        "added to the loss (the original fartashf/vsepp uses no decay)",
    )
    g.add_argument("--margin", type=float, default=0.2, help="hinge margin of the loss")
    g.add_argument(
        "--max_violation",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="VSE++ hardest negatives (--no-max_violation: VSE0, sum of violations)",
    )
    g.add_argument(
        "--max_violation_after",
        type=int,
        default=0,
        help="epochs of sum-of-violations warm-up before max violation",
    )
    g.add_argument("--seed", type=int, default=0)
    g.add_argument(
        "--train_transform",
        choices=TRAIN_TRANSFORMS,
        default=None,
        help="training view: random_resized_crop (the original's RandomResizedCrop(crop_size) "
        "of the whole image) or resize_crop (the seed's: shorter side to --resize_size, random "
        "crop); default random_resized_crop for pretrained backbones, resize_crop for the "
        "tiny CNN; both flip unless --no_hflip; evaluation always resizes and centre-crops",
    )
    g.add_argument(
        "--val_images",
        type=int,
        default=None,
        help="validate on the first N images of the validation split (0: all); default "
        f"{COCO_VAL_IMAGES} for COCO, as the original, all for other datasets",
    )
    g = p.add_argument_group("bookkeeping and scale")
    g.add_argument("--val_step", type=int, default=0, help="also validate every N steps")
    g.add_argument(
        "--checkpoint_every", type=int, default=200, help="steps between resumable checkpoints"
    )
    g.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    g.add_argument("--cache", action="store_true", help="cache decoded images in memory")
    g.add_argument(
        "--bucket_by_length",
        action="store_true",
        help="batch captions of similar length together (faster GRU)",
    )
    g.add_argument(
        "--strategy",
        choices=("default", "mirrored", "multiworker"),
        default="default",
        help="tf.distribute strategy",
    )
    g.add_argument(
        "--mixed_precision",
        choices=MIXED_PRECISION_CHOICES,
        default="auto",
        help="compute in bfloat16 or float16 (variables, loss and norms stay float32), or off; "
        "auto: bfloat16 on a CPU with AVX512_BF16 or AMX, off elsewhere (on a GPU too), "
        "decided at start and logged; a resumed run keeps what it started with",
    )
    g.add_argument("--jit_compile", action="store_true", help="XLA-compile the training step")
    g.add_argument(
        "--gru_loop",
        choices=GRU_LOOP_CHOICES,
        default="auto",
        help="GRU time loop: keras (Keras' own) or hoisted (input projection out of the loop; "
        "same weights and losses); auto: hoisted where the run computes in native bfloat16 on a "
        "CPU, where it is faster, keras elsewhere (benchmarks/README.md)",
    )
    g.add_argument(
        "--collapse_patience",
        type=int,
        default=200,
        help="steps at the collapse loss before training stops and says so",
    )
    args = p.parse_args(argv)
    if args.cnn not in BACKBONES:
        p.error(f"--cnn must be one of {', '.join(BACKBONES)}")
    if args.val_images is not None and args.val_images < 0:
        p.error(f"--val_images must be >= 0, got {args.val_images}")
    return args


def default_train_transform(cnn: str) -> str:
    """The original's RandomResizedCrop for pretrained backbones; the tiny CNN trained from
    scratch on the demo's small images keeps the seed's crop (its images are the crop size)."""
    return "resize_crop" if cnn == "tiny" else "random_resized_crop"


def is_coco(args: argparse.Namespace) -> bool:
    """COCO named by --dataset, or its Karpathy file (dataset_coco.json) read as auto."""
    if args.dataset == "coco":
        return True
    named = Path(args.texts_path).name == "dataset_coco.json"
    return args.dataset in ("auto", "karpathy") and named


def first_images(split: SplitData, n: int) -> SplitData:
    """The first `n` images of `split` and their captions (all of it if n is 0 or larger)."""
    if n == 0 or n >= len(split.image_ids):
        return split
    k = split.captions_per_image
    return dataclasses.replace(
        split,
        image_ids=split.image_ids[:n],
        image_paths=split.image_paths[:n],
        captions=split.captions[: k * n],
    )


def configs(
    args: argparse.Namespace, vocab_size: int, precomp_dim: int
) -> tuple[ModelConfig, TrainConfig, ImageConfig]:
    """The run's configuration objects from the command line."""
    model_cfg = ModelConfig(
        cnn=args.cnn,
        cnn_weights=args.cnn_weights,
        image_size=args.crop_size,
        resize_size=args.resize_size,
        joint_space=args.joint_space,
        word_dim=args.word_dim,
        num_layers=args.num_layers,
        bidirectional=args.bidirectional,
        vocab_size=vocab_size,
        no_imgnorm=args.no_imgnorm,
        measure=args.measure,
        use_abs=args.use_abs,
        finetune=args.finetune,
        precomp_dim=precomp_dim,
        gru_loop=args.gru_loop,
    )
    train_cfg = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        lr_update=args.lr_update,
        grad_clip=args.grad_clip,
        weight_decay=args.weight_decay,
        weight_decay_type=args.weight_decay_type,
        margin=args.margin,
        max_violation=args.max_violation,
        max_violation_after=args.max_violation_after,
        finetune_after=args.finetune_after,
        val_step=args.val_step,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
        prefetch_size=args.prefetch_size,
        cache=args.cache,
        strategy=args.strategy,
        mixed_precision=args.mixed_precision,
        jit_compile=args.jit_compile,
        bucket_by_length=args.bucket_by_length,
        collapse_patience=args.collapse_patience,
    )
    image_cfg = ImageConfig(
        image_size=args.crop_size,
        resize_size=args.resize_size,
        preprocess=preprocess_for(args.cnn),
        hflip=not args.no_hflip,
        train_transform=args.train_transform or default_train_transform(args.cnn),
    )
    return model_cfg, train_cfg, image_cfg


@program
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_level)
    train = load_split_from_args(args, args.train_imgs_file_path, fold_restval=args.fold_restval)
    val = load_split_from_args(args, args.val_imgs_file_path)
    val_images = args.val_images
    if val_images is None:
        val_images = COCO_VAL_IMAGES if is_coco(args) else 0
    if val_images:
        full = len(val.image_ids)
        val = first_images(val, val_images)
        log.info("validating on the first %d of %d validation images", len(val.image_ids), full)
    vocab_path = Path(args.model_dir) / "vocab.json"
    if args.resume and vocab_path.is_file():
        vocab = Vocabulary.load(vocab_path)  # the ids the checkpoint was trained with
    else:
        vocab = Vocabulary.build(train.captions, min_count=args.vocab_min_count)
        vocab.save(vocab_path)
    log.info(
        "vocabulary: %d words (min count %d, training captions only)", len(vocab), vocab.min_count
    )
    train_feats = val_feats = backbone = None
    if args.precomp_features:
        store = load_features(args.precomp_features)
        train_feats, val_feats = store.for_split(train), store.for_split(val)
        backbone = store.backbone()
        args.cnn, args.cnn_weights = store.cnn, store.cnn_weights
        args.crop_size, args.resize_size = store.image_size, store.resize_size
    model_cfg, train_cfg, image_cfg = configs(
        args, len(vocab), 0 if train_feats is None else int(train_feats.shape[1])
    )
    word_vectors = (
        load_word_vectors(args.word_vectors, vocab, args.word_dim) if args.word_vectors else None
    )
    data = TrainData(
        train=train,
        val=val,
        vocab=vocab,
        image_cfg=image_cfg,
        train_features=train_feats,
        val_features=val_feats,
        backbone=backbone,
        word_vectors=word_vectors,
        source={
            "dataset": args.dataset,
            "images_path": str(args.images_path),
            "texts_path": str(args.texts_path),
            "train": train.describe(),
            "val": val.describe(),
            "precomp_features": args.precomp_features,
        },
    )
    best = Trainer(model_cfg, train_cfg, data, args.model_dir).fit(resume=args.resume)
    if best:
        print(f"best validation (model in {args.model_dir}):\n{format_metrics(best)}")
    else:
        print(f"no new best epoch in this run; {args.model_dir} keeps the earlier export")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
