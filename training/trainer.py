"""The VSE++ training loop: distributed step, schedule, validation, checkpoints, export."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from training.config import WEIGHT_DECAY_TYPES, ModelConfig, TrainConfig
from training.export import compose_precomp_encoder, export_model
from training.images import ImageConfig
from training.losses import contrastive_loss
from training.model import VSEModel
from training.pipeline import (
    PairCounter,
    caption_eval_dataset,
    find_unreadable_images,
    image_eval_dataset,
    steps_per_epoch,
    train_dataset,
)
from training.precision import RUN_CONFIG, precision_policy, resolve_auto
from training.text import Vocabulary
from vsepp.atomic import write_json_atomic
from vsepp.datasets import SplitData
from vsepp.evaluation import evaluate, format_metrics

log = logging.getLogger(__name__)


class TrainingCollapsedError(RuntimeError):
    """Every embedding has collapsed to one point: the loss sits at its constant value."""


@dataclass
class TrainData:
    """What a run trains and validates on."""

    train: SplitData
    val: SplitData
    vocab: Vocabulary
    image_cfg: ImageConfig
    train_features: np.ndarray | None = None  # precomputed backbone features [N_train, F]
    val_features: np.ndarray | None = None  # [N_val, F]
    backbone: keras.Model | None = None  # the feature extractor, to export with a precomp head
    word_vectors: np.ndarray | None = None  # initial word embeddings [V, word_dim]
    source: dict[str, Any] = field(default_factory=dict)  # what the manifest says of the data


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The tf.distribute strategy named on the command line."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"unknown --strategy {name!r}: default, mirrored or multiworker")


def learning_rate_at(tcfg: TrainConfig, epoch: int) -> float:
    """The paper's step schedule: the learning rate times 0.1 every `lr_update` epochs
    (`--lr_update`, the seed's `--decay_rate`), epochs counted from 0."""
    return tcfg.learning_rate * 0.1 ** (epoch // tcfg.lr_update)


def collapse_value(batch_size: int, margin: float, max_violation: bool) -> float:
    """The loss when all embeddings are one point: every negative violates by exactly margin."""
    per_direction = batch_size * margin if max_violation else batch_size * (batch_size - 1) * margin
    return 2.0 * per_direction


class Trainer:
    """Trains a VSEModel on TrainData and writes the best epoch to the model directory."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        train_cfg: TrainConfig,
        data: TrainData,
        model_dir: str | os.PathLike[str],
        strategy: tf.distribute.Strategy | None = None,
    ) -> None:
        self.data = data
        self.model_dir = Path(model_dir)
        self.strategy = strategy or make_strategy(train_cfg.strategy)
        # "auto" is decided here, once; what the run trains with and records is the choice.
        self.mcfg, self.tcfg = resolve_auto(model_cfg, train_cfg, self.strategy, self.model_dir)
        model_cfg, train_cfg = self.mcfg, self.tcfg
        self.replicas = self.strategy.num_replicas_in_sync
        if train_cfg.batch_size % self.replicas:
            raise ValueError(
                f"--batch_size {train_cfg.batch_size} must divide over {self.replicas} replicas"
            )
        self.precomp = model_cfg.precomp_dim > 0
        keras.utils.set_random_seed(train_cfg.seed)
        # The layers keep the policy they are built with; the global one is left as it was.
        with precision_policy(train_cfg.mixed_precision), self.strategy.scope():
            self.model = VSEModel.build(model_cfg, data.word_vectors)
            self.optimizer: keras.optimizers.Optimizer = self._make_optimizer()
            # Build over every variable that may ever train (the backbone joins when
            # fine-tuning starts) so checkpoints have one structure throughout.
            built_over = self._optimizer_variables()
            self.optimizer.build(built_over)
            self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
            self.step_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
            self.global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="gstep")
            self.best_rsum = tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best")
        # Which variables the optimizer's slots belong to, saved with every checkpoint: a run
        # resumed with other flags (--finetune_after added) builds its slots over another set.
        self.optimizer_variables = tf.Variable(
            json.dumps([v.path for v in built_over]), trainable=False, name="optimizer_vars"
        )
        self.checkpoint = self._checkpoint(self.optimizer)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, str(self.model_dir / "train_state"), max_to_keep=2
        )
        self._steps: dict[tuple[bool, bool], Callable[..., Any]] = {}
        self.history: list[dict[str, Any]] = []
        self._epoch_facts: dict[str, Any] = {}

    def _make_optimizer(self) -> keras.optimizers.Optimizer:
        adam = keras.optimizers.Adam(
            learning_rate=self.tcfg.learning_rate, weight_decay=self._decoupled_decay()
        )
        # float16 needs loss scaling; bfloat16 has float32's range and does not.
        if self.tcfg.mixed_precision == "float16":
            return keras.optimizers.LossScaleOptimizer(adam)
        return adam

    def _checkpoint(self, optimizer: keras.optimizers.Optimizer) -> tf.train.Checkpoint:
        return tf.train.Checkpoint(
            image_encoder=self.model.image_encoder,
            text_encoder=self.model.text_encoder,
            optimizer=optimizer,
            epoch=self.epoch,
            step_in_epoch=self.step_in_epoch,
            global_step=self.global_step,
            best_rsum=self.best_rsum,
            optimizer_variables=self.optimizer_variables,
        )

    # ---- the step -------------------------------------------------------------------------

    def _decoupled_decay(self) -> float | None:
        """Adam's own (decoupled) weight decay, when that is the kind asked for."""
        wd, kind = self.tcfg.weight_decay, self.tcfg.weight_decay_type
        if kind not in WEIGHT_DECAY_TYPES:
            raise ValueError(f"unknown weight_decay_type {kind!r}: {WEIGHT_DECAY_TYPES}")
        if wd < 0:
            raise ValueError(f"--weight_decay must be >= 0, got {wd}")
        return wd if wd and kind == "decoupled" else None

    def l2_penalty(self, variables: list[tf.Variable]) -> tf.Tensor:
        """The seed's weight decay: weight_decay * sum(w**2) / 2 over the non-bias weights
        being trained (biases and batch-norm offsets are left alone), 0 unless asked for."""
        if not self.tcfg.weight_decay or self.tcfg.weight_decay_type != "l2":
            return tf.constant(0.0, tf.float32)
        weights = [v for v in variables if _is_decayed(v)]
        total = tf.add_n([tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in weights])
        return self.tcfg.weight_decay * total

    def _optimizer_variables(self) -> list[tf.Variable]:
        """Every variable that may ever train: a pretrained backbone joins only if it may be
        fine-tuned (its Adam slots would otherwise cost memory for nothing)."""
        may_finetune = self.mcfg.finetune or self.tcfg.finetune_after >= 0
        self.model.set_backbone_trainable(may_finetune or not self._has_pretrained_backbone())
        return list(self.model.trainable_variables)

    def _has_pretrained_backbone(self) -> bool:
        return not self.precomp and self.mcfg.cnn != "tiny"

    def _finetuning(self, epoch: int) -> bool:
        if not self._has_pretrained_backbone():
            return False
        if self.tcfg.finetune_after >= 0:
            return epoch >= self.tcfg.finetune_after
        return self.mcfg.finetune

    def _replica_step(self, batch: dict[str, tf.Tensor], max_violation: bool) -> tf.Tensor:
        ctx = tf.distribute.get_replica_context()
        n = ctx.num_replicas_in_sync
        variables = self.model.trainable_variables
        image_input = batch["feature"] if self.precomp else batch["image"]
        with tf.GradientTape() as tape:
            im, cap = self.model.embed(image_input, batch["tokens"], training=True)
            if n > 1:
                # Hard negatives come from the global batch, as on one device.
                im = ctx.all_gather(im, axis=0)
                cap = ctx.all_gather(cap, axis=0)
            loss = contrastive_loss(
                im,
                cap,
                margin=self.tcfg.margin,
                max_violation=max_violation,
                measure=self.mcfg.measure,
            )
            # Every replica computes the same global loss; the gathers' gradients sum the
            # replicas' shares, so each replica differentiates loss / n.
            # The penalty is the same on every replica: each adds its 1/n share.
            objective = (loss + self.l2_penalty(variables)) / n
            if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
                objective = self.optimizer.scale_loss(objective)
        grads = tape.gradient(objective, variables)
        grads = [
            tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
            for g, v in zip(grads, variables, strict=True)
        ]
        if n > 1:
            grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        scale = (
            tf.cast(self.optimizer.dynamic_scale, tf.float32)
            if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)
            else None
        )
        if scale is not None:
            grads = [g / scale for g in grads]
        if self.tcfg.grad_clip > 0:
            # Clip the global gradient (after the all-reduce), as one device would.
            grads, _ = tf.clip_by_global_norm(grads, self.tcfg.grad_clip)
        # The optimizer sums over replicas again; hand each its 1/n share of the total.
        factor = (scale if scale is not None else 1.0) / n
        self.optimizer.apply([g * factor for g in grads], variables)
        return loss

    def _step_fn(self, max_violation: bool, finetune: bool) -> Callable[..., Any]:
        """The compiled step of one training phase (loss kind, backbone frozen or not)."""
        # The trainable set is read when the step is traced, and again at every call.
        self.model.set_backbone_trainable(finetune or not self._has_pretrained_backbone())
        key = (max_violation, finetune)
        if key not in self._steps:

            def step(batch: dict[str, tf.Tensor]) -> tf.Tensor:
                per_replica = self.strategy.run(self._replica_step, args=(batch, max_violation))
                # Each replica holds the same global loss.
                return self.strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None)

            # Caption widths vary from batch to batch: trace once for any width.
            self._steps[key] = tf.function(
                step, jit_compile=self.tcfg.jit_compile or None, reduce_retracing=True
            )
        return self._steps[key]

    def train_step(self, batch: dict[str, tf.Tensor], epoch: int) -> float:
        """One optimisation step on a global batch (public for tests and benchmarks)."""
        max_violation = self.tcfg.max_violation and epoch >= self.tcfg.max_violation_after
        step = self._step_fn(max_violation, self._finetuning(epoch))
        dist = (
            self.strategy.experimental_distribute_values_from_function(
                lambda ctx: _shard(batch, ctx)
            )
            if self.replicas > 1
            else batch
        )
        return float(step(dist))

    # ---- validation and export --------------------------------------------------------------

    def embed_split(
        self, split: SplitData, features: np.ndarray | None, batch_size: int = 128
    ) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings of a split's images [N, D] and captions [5N, D], in order."""
        image_fn = tf.function(
            lambda x: self.model.image_encoder(x, training=False), reduce_retracing=True
        )
        text_fn = tf.function(
            lambda t: self.model.text_encoder(t, training=False), reduce_retracing=True
        )
        key = "feature" if self.precomp else "image"
        images = image_eval_dataset(split, self.data.image_cfg, batch_size, features=features)
        ims = [image_fn(b[key]).numpy() for b in images]
        caps = [
            text_fn(b["tokens"]).numpy()
            for b in caption_eval_dataset(split, self.data.vocab, batch_size)
        ]
        return np.concatenate(ims).astype(np.float32), np.concatenate(caps).astype(np.float32)

    def validate(self) -> dict[str, Any]:
        """R@K both ways and rsum on the validation split."""
        t0 = time.perf_counter()
        im, cap = self.embed_split(self.data.val, self.data.val_features)
        metrics = evaluate(im, cap, measure=self.mcfg.measure)
        log.info("validation (%.1fs):\n%s", time.perf_counter() - t0, format_metrics(metrics))
        return metrics

    def float32_encoders(self) -> tuple[keras.Model, keras.Model]:
        """The trained encoders computing in float32, as the export writes them whatever the
        training precision (the weights are float32 anyway): the model directory computes in
        float32 on any machine, and the embedding programs choose bfloat16 themselves where
        the CPU has it (`vsepp.precision` rewrites a float32 graph; a bfloat16 one it refuses)."""
        if self.tcfg.mixed_precision == "off":
            return self.model.image_encoder, self.model.text_encoder
        # The same architecture built in float32; every weight is copied, so none is loaded.
        with precision_policy("off"):
            copy = VSEModel.build(dataclasses.replace(self.mcfg, cnn_weights="none"))
        copy.image_encoder.set_weights(self.model.image_encoder.get_weights())
        copy.text_encoder.set_weights(self.model.text_encoder.get_weights())
        return copy.image_encoder, copy.text_encoder

    def export(self, metrics: dict[str, Any], epoch: int) -> None:
        """Write the current encoders to the model directory (atomically)."""
        image_encoder, text_encoder = self.float32_encoders()
        if self.precomp:
            if self.data.backbone is None:
                raise ValueError("precomputed-feature training needs the backbone to export")
            image_encoder = compose_precomp_encoder(self.data.backbone, image_encoder)
        export_model(
            self.model_dir,
            image_encoder,
            text_encoder,
            self.data.vocab,
            self.mcfg,
            self.data.image_cfg,
            extra={
                "training": {
                    **self.tcfg.to_dict(),
                    "image": self.data.image_cfg.to_dict(),
                    "data": self.data.source,
                    "epoch": epoch,
                },
                "metrics": {"val": metrics},
                "history": self.history,
            },
        )

    # ---- the loop -----------------------------------------------------------------------

    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train for the configured epochs; returns the best validation metrics."""
        if resume:
            self._restore()
        elif self.manager.latest_checkpoint:
            raise FileExistsError(
                f"{self.model_dir} holds a checkpoint of an earlier run: pass --resume to "
                "continue it, or choose another --save_model_path"
            )
        write_json_atomic(
            self.model_dir / "train_state" / RUN_CONFIG,
            {"model_config": self.mcfg.to_dict(), "training": self.tcfg.to_dict()},
        )
        writer = tf.summary.create_file_writer(str(self.model_dir / "logs"))
        tcfg, data = self.tcfg, self.data
        steps = steps_per_epoch(data.train, tcfg.batch_size)
        best: dict[str, Any] = {}
        at_collapse = 0
        counter = PairCounter(len(data.train.captions))
        named_unreadable = False
        for epoch in range(int(self.epoch.numpy()), tcfg.epochs):
            lr = learning_rate_at(tcfg, epoch)
            self.optimizer.learning_rate = lr
            max_violation = tcfg.max_violation and epoch >= tcfg.max_violation_after
            start = int(self.step_in_epoch.numpy())
            counter.reset()
            ds = train_dataset(
                data.train,
                data.vocab,
                data.image_cfg,
                tcfg.batch_size,
                # A new order every epoch, the same one again when a run is resumed.
                seed=tcfg.seed * 100_003 + epoch,
                prefetch_size=tcfg.prefetch_size,
                cache=tcfg.cache,
                features=data.train_features,
                bucket_by_length=tcfg.bucket_by_length,
                counter=counter,
            )
            if start:
                ds = ds.skip(start)
                log.info("resuming epoch %d at step %d", epoch, start)
            step_fn = self._step_fn(max_violation, self._finetuning(epoch))
            dist_ds = self.strategy.experimental_distribute_dataset(ds)
            bar = tqdm(
                total=steps,
                initial=start,
                desc=f"epoch {epoch + 1}/{tcfg.epochs}",
                unit="step",
                dynamic_ncols=True,
                disable=None,
            )
            t0, seen = time.perf_counter(), 0
            losses: list[float] = []
            collapse_at = collapse_value(tcfg.batch_size, tcfg.margin, max_violation)
            for batch in dist_ds:
                loss = float(step_fn(batch))
                losses.append(loss)
                seen += tcfg.batch_size
                self.step_in_epoch.assign_add(1)
                self.global_step.assign_add(1)
                gstep = int(self.global_step.numpy())
                rate = seen / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(loss=f"{loss:.3f}", pairs_s=f"{rate:.0f}")
                bar.update(1)
                with writer.as_default(step=gstep):
                    tf.summary.scalar("train/loss", loss)
                    tf.summary.scalar("train/lr", lr)
                if not math.isfinite(loss):
                    raise FloatingPointError(f"loss became {loss} at epoch {epoch + 1}")
                at_collapse = at_collapse + 1 if abs(loss - collapse_at) < 1e-3 * collapse_at else 0
                if at_collapse >= tcfg.collapse_patience:
                    raise TrainingCollapsedError(
                        _collapse_message(loss, epoch, tcfg, max_violation)
                    )
                if tcfg.checkpoint_every and gstep % tcfg.checkpoint_every == 0:
                    self.manager.save(checkpoint_number=gstep)
                if tcfg.val_step and gstep % tcfg.val_step == 0:
                    best = self._validate_and_keep(epoch, gstep, writer) or best
            bar.close()
            skipped = counter.skipped
            if skipped:
                log.warning("epoch %d: skipped %d pairs of unreadable images", epoch + 1, skipped)
                if not named_unreadable and data.train_features is None:
                    find_unreadable_images(data.train)  # logs their names, once per run
                    named_unreadable = True
            log.info(
                "epoch %d/%d: mean loss %.4f, %.0f pairs/s, lr %.2g, %s",
                epoch + 1,
                tcfg.epochs,
                float(np.mean(losses)) if losses else float("nan"),
                seen / max(time.perf_counter() - t0, 1e-9),
                lr,
                "max violation" if max_violation else "sum of violations",
            )
            self.epoch.assign(epoch + 1)
            self.step_in_epoch.assign(0)
            self._epoch_facts = {
                "loss": "max_violation" if max_violation else "sum_violation",
                "mean_loss": float(np.mean(losses)) if losses else None,
                "finetune": self._finetuning(epoch),
            }
            best = self._validate_and_keep(epoch, int(self.global_step.numpy()), writer) or best
            self._epoch_facts = {}
            self.manager.save(checkpoint_number=int(self.global_step.numpy()))
        writer.flush()
        return best

    def _validate_and_keep(
        self, epoch: int, gstep: int, writer: tf.summary.SummaryWriter
    ) -> dict[str, Any] | None:
        metrics = self.validate()
        self.history.append(
            {
                "epoch": epoch + 1,
                "step": gstep,
                "lr": float(self.optimizer.learning_rate.numpy()),
                "rsum": metrics["rsum"],
                "i2t_r1": metrics["i2t"]["r1"],
                "t2i_r1": metrics["t2i"]["r1"],
                # What the epoch trained with (absent for mid-epoch --val_step entries).
                **self._epoch_facts,
            }
        )
        write_json_atomic(self.model_dir / "train_state" / "history.json", self.history)
        with writer.as_default(step=gstep):
            tf.summary.scalar("val/rsum", metrics["rsum"])
            for way in ("i2t", "t2i"):
                for k in ("r1", "r5", "r10"):
                    tf.summary.scalar(f"val/{way}_{k}", metrics[way][k])
        if metrics["rsum"] > float(self.best_rsum.numpy()):
            self.best_rsum.assign(metrics["rsum"])
            self.export(metrics, epoch + 1)
            log.info("new best rsum %.2f at epoch %d: exported", metrics["rsum"], epoch + 1)
            return metrics
        return None

    def _restore_into_other_slots(self, latest: str, saved: list[str]) -> None:
        """Resume a checkpoint whose optimizer was built over another set of variables.

        A run started frozen and resumed with --finetune_after has slots for the backbone
        that the checkpoint lacks (or the reverse). The checkpoint is read into an optimizer
        built over its own set, then every slot (and the step count) is copied to this
        run's optimizer by variable; variables the checkpoint had no slots for start fresh,
        as they would have had they joined the optimisation at this point.
        """
        by_path = {v.path: v for v in self.model.variables}
        unknown = [p for p in saved if p not in by_path]
        if unknown:
            raise ValueError(
                f"{latest}: its optimizer trained variables this model lacks "
                f"({', '.join(unknown[:3])}): was it made with other model flags?"
            )
        current = self.optimizer_variables.numpy()
        with self.strategy.scope():
            theirs = self._make_optimizer()
            theirs.build([by_path[p] for p in saved])
        self._checkpoint(theirs).restore(latest).assert_existing_objects_matched()
        # This run's checkpoints record its own set from now on.
        self.optimizer_variables.assign(current)
        ours = {_slot_key(v): v for v in self.optimizer.variables}
        copied = 0
        for v in theirs.variables:
            target = ours.get(_slot_key(v))
            if target is not None and tuple(target.shape) == tuple(v.shape):
                target.assign(v)
                copied += 1
        fresh = len(self.optimizer.variables) - copied
        log.info(
            "checkpoint optimizer had slots for %d variables, this run trains %d: copied %d "
            "optimizer variables, %d start fresh",
            len(saved),
            len(json.loads(self.optimizer_variables.numpy().decode())),
            copied,
            fresh,
        )

    def _restore(self) -> None:
        latest = self.manager.latest_checkpoint
        if latest is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {self.model_dir / 'train_state'}")
        saved = _saved_optimizer_paths(latest)
        current = json.loads(self.optimizer_variables.numpy().decode())
        if saved is None or saved == current:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
        else:
            self._restore_into_other_slots(latest, saved)
        history = self.model_dir / "train_state" / "history.json"
        if history.is_file():
            self.history = json.loads(history.read_text(encoding="utf-8"))
        log.info(
            "resumed from %s: epoch %d, step %d in epoch, best rsum %.2f",
            latest,
            int(self.epoch.numpy()) + 1,
            int(self.step_in_epoch.numpy()),
            float(self.best_rsum.numpy()),
        )


def _saved_optimizer_paths(checkpoint: str) -> list[str] | None:
    """The variables a checkpoint's optimizer slots belong to (None: saved before this was
    recorded, so taken to be the current run's)."""
    reader = tf.train.load_checkpoint(checkpoint)
    key = "optimizer_variables/.ATTRIBUTES/VARIABLE_VALUE"
    if not reader.has_tensor(key):
        return None
    value = reader.get_tensor(key)
    paths: list[str] = json.loads(value.decode() if isinstance(value, bytes) else str(value))
    return paths


def _slot_key(v: tf.Variable) -> str:
    # An optimizer variable's path without the optimizer's own (uniquified) name.
    return v.path.split("/", 1)[-1]


def _is_decayed(v: tf.Variable) -> bool:
    """Whether the seed's L2 penalty applies: every weight but biases (and BN's beta)."""
    return v.name.split("/")[-1].split(":")[0] not in ("bias", "beta")


def _shard(batch: dict[str, tf.Tensor], ctx: tf.distribute.InputContext) -> dict[str, tf.Tensor]:
    """Replica `ctx.replica_id_in_sync_group`'s contiguous slice of a global batch."""
    out = {}
    for k, v in batch.items():
        v = tf.convert_to_tensor(v)
        per = tf.shape(v)[0] // ctx.num_replicas_in_sync
        out[k] = v[ctx.replica_id_in_sync_group * per : (ctx.replica_id_in_sync_group + 1) * per]
    return out


def _collapse_message(loss: float, epoch: int, tcfg: TrainConfig, max_violation: bool) -> str:
    value = "2 x batch x margin" if max_violation else "2 x batch x (batch - 1) x margin"
    return (
        f"training collapsed at epoch {epoch + 1}: the loss has stayed at {loss:.3f} "
        f"(= {value}) for {tcfg.collapse_patience} steps, so every embedding is "
        "the same point and recall is at chance. With a backbone trained from scratch, warm "
        "up with the sum of violations first: --max_violation_after 2 (or more)"
    )
