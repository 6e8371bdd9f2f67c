"""Training-step throughput (pairs/s) in precomputed-feature mode, against the original PyTorch.

    .venv/bin/python benchmarks/bench_train.py --torch_python /tmp/torchvenv/bin/python
    .venv/bin/python benchmarks/bench_train.py --quick          # 4 batches, 2 rounds: minutes
    .venv/bin/python benchmarks/bench_train.py --wait_load 1.5 --json_out train.json

At the paper's sizes (4096-d features, joint space 1024, word 300, one GRU of 1024, batch 128,
a Flickr-sized vocabulary of 8000) on seeded synthetic pairs whose captions hold 8-20 tokens
(uniform, <start> and <end> included), it times:

- our step: the real ``Trainer.train_step`` (max-violation loss, Adam, clipping at 2.0) on
  batches drawn from the real ``train_dataset`` (and ``bucket_by_length=True`` for the
  bucketed variants), in the variants plain, XLA (``jit_compile``), bucketed, bfloat16 (only
  where the CPU has AVX512_BF16 or AMX), the hoisted GRU loop (``--gru_loop hoisted``,
  ``training.model.HoistedGRU``) and their combinations;
- the original: a minimal transcription of fartashf/vsepp's precomp training step in PyTorch
  on the same pairs, run by ``--torch_python`` in a child process (``--torch-only``, JSON
  lines), so the project never imports torch;
- with ``--experimental``: our step with another GRU time loop (``experimental_gru_class``:
  input projection hoisted out of the loop; or a "packed" loop that, like the original's
  pack_padded_sequence, runs each step on the captions still going only), swapped in by
  monkeypatching ``keras.layers.GRU`` while the trainer builds its model (same weights), to
  measure a change before anyone makes it in ``training/``.

Batches are materialised first, so the input pipeline is not timed (the original's
DataLoader is not either). Each variant runs one warm-up pass over its pool of batches
(tracing and XLA compilation of every caption length happen there), then ``--repeats``
rounds of one timed pass per variant, interleaved so that a shared machine's changing load
falls on all of them alike; ms/step is the median over the passes. Prints a markdown table
(``--json_out`` keeps every pass). On a busy machine wait for quiet (``--wait_load``): the
original's OpenMP threads spin while the other core is taken and it slows down far more
than ours, which flatters the ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import machine

log = logging.getLogger("bench_train")

CAPTION_MIN, CAPTION_MAX = 8, 20  # tokens per caption, <start> and <end> included
CAPTIONS_PER_IMAGE = 5
BASE_VARIANTS = (
    "plain",
    "xla",
    "bucket",
    "xla+bucket",
    "bf16",
    "bf16+xla",
    "bf16+bucket",
    "bf16+xla+bucket",
    "hoisted",
    "hoisted+bf16",
)
EXPERIMENTAL_VARIANTS = ("exp:hoisted", "exp:packed", "exp:packed+bf16", "exp:hoisted+bf16+bucket")
# hoisted: the GRU with its input projection hoisted out of the time loop
# (training.model.HoistedGRU, --gru_loop hoisted); "keras" names Keras' own loop. Every
# variant names both: the command line's default, "auto", is hoisted+bf16 on a CPU with
# AVX512_BF16 or AMX and plain elsewhere (training.precision).
OPTIONS = frozenset({"xla", "bucket", "bf16", "keras", "hoisted"})
EXPERIMENTAL_OPTIONS = frozenset({"hoisted", "unrolled", "packed"})  # experimental_gru_class
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
TORCH = "PyTorch original (fartashf/vsepp)"
QUIET_CORES = 0.75  # a round counts when every variant kept this share of the threads busy


@dataclass(frozen=True)
class Sizes:
    """The model and run sizes, the same for both implementations."""

    precomp_dim: int = 4096  # image feature size (VGG19 fc7 in the paper's precomp sets)
    joint_space: int = 1024  # joint embedding and GRU size
    word_dim: int = 300  # word embedding size
    vocab_size: int = 8000  # about Flickr30k's vocabulary at min count 4
    batch_size: int = 128  # pairs per step
    n_images: int = 1000  # synthetic images (5 captions each) the batches are drawn from
    pool: int = 16  # distinct batches per pass
    repeats: int = 5  # timed passes over the pool
    threads: int = 2  # threads of both: torch.set_num_threads, TF's intra- and inter-op pools
    seed: int = 0


# ---- data, shared by both sides (numpy only) -------------------------------------------------


def synthetic_pairs(sizes: Sizes) -> tuple[np.ndarray, list[np.ndarray]]:
    """L2-normalised features [N, F] and 5N captions of token ids framed by <start>/<end>."""
    rng = np.random.default_rng(sizes.seed)
    feats = rng.standard_normal((sizes.n_images, sizes.precomp_dim), dtype=np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    n_caps = CAPTIONS_PER_IMAGE * sizes.n_images
    lengths = rng.integers(CAPTION_MIN, CAPTION_MAX + 1, n_caps)
    # Ids 0-3 are <pad>, <unk>, <start>, <end> in both vocabularies.
    captions = [
        np.concatenate(([2], rng.integers(4, sizes.vocab_size, n - 2), [3])).astype(np.int64)
        for n in lengths
    ]
    return feats, captions


def warm_up(step: Callable[[int], float], pool: int) -> dict[str, Any]:
    """One untimed-for-the-table pass over the pool: tracing and compilation happen here."""
    t0 = time.perf_counter()
    losses = [step(i) for i in range(pool)]
    return {
        "warmup_s": time.perf_counter() - t0,
        "first_loss": losses[0],
        "finite": bool(np.all(np.isfinite(losses))),
    }


def timed_pass(step: Callable[[int], float], pool: int) -> dict[str, float]:
    """One pass over the pool: wall and process CPU milliseconds per step."""
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(pool):
        step(i)
    return {
        "ms": 1000.0 * (time.perf_counter() - t0) / pool,
        # CPU time of all the process's threads: a wall time well above this / cores means
        # the machine was busy with something else during the pass.
        "cpu_ms": 1000.0 * (time.process_time() - c0) / pool,
    }


def summarise(passes: list[dict[str, float]]) -> dict[str, Any]:
    """Median wall and CPU ms/step over the timed passes, and every pass."""
    return {
        "ms_per_step": statistics.median(p["ms"] for p in passes),
        "cpu_ms_per_step": statistics.median(p["cpu_ms"] for p in passes),
        "passes": passes,
    }


# ---- the original, in PyTorch (runs in its own venv) -------------------------------------------


def build_torch_step(sizes: Sizes) -> tuple[Callable[[int], float], dict[str, Any]]:
    """fartashf/vsepp's precomp training step (model.py VSE.train_emb) over a pool of batches."""
    import torch
    from torch import nn
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    torch.set_num_threads(sizes.threads)
    torch.manual_seed(sizes.seed)

    # fartashf/vsepp model.py: l2norm, EncoderImagePrecomp, EncoderText, ContrastiveLoss and
    # VSE.train_emb, minus logging and CUDA; clip_grad_norm is spelt clip_grad_norm_ today.
    def l2norm(x: torch.Tensor) -> torch.Tensor:
        return x / x.pow(2).sum(dim=1, keepdim=True).sqrt()

    class EncoderImagePrecomp(nn.Module):
        def __init__(self, img_dim: int, embed_size: int) -> None:
            super().__init__()
            self.fc = nn.Linear(img_dim, embed_size)
            r = np.sqrt(6.0) / np.sqrt(img_dim + embed_size)  # init_weights: Xavier
            self.fc.weight.data.uniform_(-r, r)
            self.fc.bias.data.fill_(0)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return l2norm(self.fc(images))

    class EncoderText(nn.Module):
        def __init__(self, vocab_size: int, word_dim: int, embed_size: int) -> None:
            super().__init__()
            self.embed_size = embed_size
            self.embed = nn.Embedding(vocab_size, word_dim)
            self.rnn = nn.GRU(word_dim, embed_size, 1, batch_first=True)
            self.embed.weight.data.uniform_(-0.1, 0.1)

        def forward(self, x: torch.Tensor, lengths: list[int]) -> torch.Tensor:
            x = self.embed(x)
            packed = pack_padded_sequence(x, lengths, batch_first=True)
            out, _ = self.rnn(packed)
            padded = pad_packed_sequence(out, batch_first=True)
            index = torch.LongTensor(lengths).view(-1, 1, 1)
            index = index.expand(x.size(0), 1, self.embed_size) - 1
            return l2norm(torch.gather(padded[0], 1, index).squeeze(1))

    def contrastive_loss(im: torch.Tensor, s: torch.Tensor, margin: float) -> torch.Tensor:
        scores = im.mm(s.t())
        diagonal = scores.diag().view(im.size(0), 1)
        cost_s = (margin + scores - diagonal.expand_as(scores)).clamp(min=0)
        cost_im = (margin + scores - diagonal.t().expand_as(scores)).clamp(min=0)
        mask = torch.eye(scores.size(0)) > 0.5
        cost_s = cost_s.masked_fill_(mask, 0).max(1)[0]  # max_violation
        cost_im = cost_im.masked_fill_(mask, 0).max(0)[0]
        return cost_s.sum() + cost_im.sum()

    img_enc = EncoderImagePrecomp(sizes.precomp_dim, sizes.joint_space)
    txt_enc = EncoderText(sizes.vocab_size, sizes.word_dim, sizes.joint_space)
    img_enc.train()
    txt_enc.train()
    params = [*txt_enc.parameters(), *img_enc.fc.parameters()]
    optimizer = torch.optim.Adam(params, lr=2e-4)

    # Batches as the original's DataLoader makes them: shuffled pairs, then data.py's
    # collate_fn sorts each batch by caption length (longest first) and zero-pads.
    feats, captions = synthetic_pairs(sizes)
    order = np.random.default_rng(sizes.seed + 1).permutation(len(captions))
    batches = []
    for b in range(sizes.pool):
        rows = sorted(
            order[b * sizes.batch_size : (b + 1) * sizes.batch_size],
            key=lambda r: len(captions[r]),
            reverse=True,
        )
        lengths = [len(captions[r]) for r in rows]
        targets = torch.zeros(len(rows), max(lengths), dtype=torch.long)
        for i, r in enumerate(rows):
            targets[i, : lengths[i]] = torch.from_numpy(captions[r])
        images = torch.from_numpy(feats[[r // CAPTIONS_PER_IMAGE for r in rows]])
        batches.append((images, targets, lengths))

    def step(i: int) -> float:
        images, targets, lengths = batches[i]
        img_emb, cap_emb = img_enc(images), txt_enc(targets, lengths)
        optimizer.zero_grad()
        loss = contrastive_loss(img_emb, cap_emb, 0.2)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 2.0)
        optimizer.step()
        return loss.item()

    meta = {
        "torch": torch.__version__,
        "numpy": np.__version__,
        "threads": torch.get_num_threads(),
        "mean_padded_length": float(np.mean([b[1].shape[1] for b in batches])),
    }
    return step, meta


def torch_worker(sizes: Sizes, serve: bool) -> None:
    """The --torch-only mode: JSON lines on stdout.

    With `serve`, one line when ready, then one per command read from stdin ("warmup",
    "pass", "quit"), so the parent can interleave its passes with its own; without, warm-up
    and `sizes.repeats` passes, then a single summary line.
    """
    step, meta = build_torch_step(sizes)
    if not serve:
        warm = warm_up(step, sizes.pool)
        passes = [timed_pass(step, sizes.pool) for _ in range(sizes.repeats)]
        print(json.dumps({**meta, **warm, **summarise(passes)}), flush=True)
        return
    print(json.dumps(meta), flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "quit":
            break
        out = warm_up(step, sizes.pool) if command == "warmup" else timed_pass(step, sizes.pool)
        print(json.dumps(out), flush=True)


class TorchRunner:
    """The PyTorch baseline in a child process (`--torch_python`), driven pass by pass."""

    def __init__(self, python: str, sizes: Sizes) -> None:
        cmd = [python, str(Path(__file__).resolve()), "--torch-only", "--serve"]
        cmd += ["--sizes", json.dumps(asdict(sizes))]
        self.pool = sizes.pool
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.meta = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            tail = " | ".join(err.strip().splitlines()[-3:])
            raise RuntimeError(f"--torch-only worker exited ({self.proc.wait()}): {tail}")
        return dict(json.loads(line))

    def command(self, name: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(name + "\n")
        self.proc.stdin.flush()
        return self._read()

    def warm_up(self) -> dict[str, Any]:
        return self.command("warmup")

    def timed_pass(self) -> dict[str, float]:
        return self.command("pass")

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                assert self.proc.stdin is not None
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---- ours -------------------------------------------------------------------------------------


def experimental_gru_class(kind: str) -> type:
    """A keras.layers.GRU with another time loop (EXPERIMENTAL, for measuring only).

    Same weights and maths as the Keras GRU (reset_after=True; a caption's state stops at
    its last token), but x @ W for every step is one [B*T, D] x [D, 3U] matmul before the
    loop, which then holds the recurrent matmul alone. The loop, by `kind`:

    - "hoisted": tf.foldl over the steps, masked steps keep the state;
    - "unrolled": a Python loop over the steps (the length is static inside the trainer's
      tf.function), masked as above;
    - "packed": unrolled, with the batch sorted by length so that step t runs on the captions
      still going only, as pack_padded_sequence does in the original (no XLA: the active
      batch shrinks step by step).

    The unrolled loops need a static length: the trainer's step is traced with
    reduce_retracing, so once it has seen two caption widths (bucketed batches) it traces
    for any width and these fall back to the masked tf.foldl.
    """
    import keras
    import tensorflow as tf

    class ExperimentalGRU(keras.layers.GRU):
        def inner_loop(
            self, sequences: Any, initial_state: Any, mask: Any, training: bool = False
        ) -> Any:
            cell = self.cell
            if not cell.reset_after or not cell.use_bias or self.return_sequences:
                return super().inner_loop(sequences, initial_state, mask, training)
            dtype = sequences.dtype
            recurrent = tf.cast(cell.recurrent_kernel, dtype)
            bias = tf.cast(cell.bias, dtype)
            if mask is None:
                mask = tf.ones(tf.shape(sequences)[:2], tf.bool)
            h = initial_state[0]
            steps = sequences.shape[1]
            order = None
            if kind == "packed" and steps is not None:
                lengths = tf.reduce_sum(tf.cast(mask, tf.int32), axis=1)
                order = tf.argsort(lengths, direction="DESCENDING", stable=True)
                sequences = tf.gather(sequences, order)
                lengths = tf.gather(lengths, order)
                h = tf.gather(h, order)
            # Time-major input projections of every step at once.
            xw = tf.einsum("btd,dg->tbg", sequences, tf.cast(cell.kernel, dtype)) + bias[0]
            keep = tf.transpose(mask)[:, :, tf.newaxis]  # [T, B, 1]

            def cell_step(h: Any, x_t: Any) -> Any:
                x_z, x_r, x_h = tf.split(x_t, 3, axis=-1)
                inner = tf.matmul(h, recurrent) + bias[1]
                r_z, r_r, r_h = tf.split(inner, 3, axis=-1)
                z = tf.sigmoid(x_z + r_z)
                r = tf.sigmoid(x_r + r_r)
                return z * h + (1 - z) * tf.tanh(x_h + r * r_h)

            def masked_step(h: Any, inputs: tuple[Any, Any]) -> Any:
                return tf.where(inputs[1], cell_step(h, inputs[0]), h)

            if order is not None:
                for t in range(steps):
                    n = tf.reduce_sum(tf.cast(lengths > t, tf.int32))
                    h = tf.concat([cell_step(h[:n], xw[t, :n]), h[n:]], axis=0)
                h = tf.gather(h, tf.argsort(order))  # back to the batch's order
            elif kind in ("unrolled", "packed") and steps is not None:
                for t in range(steps):
                    h = masked_step(h, (xw[t], keep[t]))
            else:
                h = tf.foldl(masked_step, (xw, keep), initializer=h)
            return h, h, [h]

    return ExperimentalGRU


@contextlib.contextmanager
def patched_gru(kind: str | None) -> Iterator[None]:
    """Swap keras.layers.GRU (looked up by training.model at build time) while building."""
    if kind is None:
        yield
        return
    import keras

    original = keras.layers.GRU
    keras.layers.GRU = experimental_gru_class(kind)
    try:
        yield
    finally:
        keras.layers.GRU = original


def variant_parts(name: str) -> set[str]:
    """The options of a variant name ('exp:unrolled+xla' -> {'unrolled', 'xla'})."""
    return set(name.removeprefix("exp:").split("+")) - {"plain"}


def valid_variant(name: str) -> bool:
    """'plain', or options joined by '+' ('exp:' allows the experimental GRU loops too)."""
    allowed = OPTIONS | (EXPERIMENTAL_OPTIONS if name.startswith("exp:") else frozenset())
    parts = name.removeprefix("exp:").split("+")
    return name == "plain" or (set(parts) <= allowed and len(set(parts)) == len(parts))


def make_train_data(sizes: Sizes) -> Any:
    """The synthetic pairs as the trainer's TrainData (captions as words w4..w{V-1})."""
    from training.images import ImageConfig
    from training.text import RESERVED, Vocabulary
    from training.trainer import TrainData
    from vsepp.datasets import SplitData

    feats, captions = synthetic_pairs(sizes)
    vocab = Vocabulary([*RESERVED, *(f"w{i}" for i in range(4, sizes.vocab_size))], 1)
    texts = [" ".join(f"w{t}" for t in c[1:-1]) for c in captions]
    ids = [f"synthetic_{i:06d}.jpg" for i in range(sizes.n_images)]
    split = SplitData("train", ids, [Path("/nonexistent") / i for i in ids], texts)
    if vocab.encode(texts[0]) != captions[0].tolist():
        raise AssertionError("synthetic captions do not round-trip through the vocabulary")
    return TrainData(split, split, vocab, ImageConfig(), train_features=feats, val_features=feats)


def our_batches(data: Any, sizes: Sizes, bucket: bool) -> list[dict[str, Any]]:
    """The first `pool` batches of the real training pipeline (bucketed or not)."""
    from training.pipeline import train_dataset

    ds = train_dataset(
        data.train,
        data.vocab,
        data.image_cfg,
        sizes.batch_size,
        seed=sizes.seed + 1,
        features=data.train_features,
        bucket_by_length=bucket,
    )
    batches = list(ds.take(sizes.pool))
    if len(batches) < sizes.pool:
        raise ValueError(f"--pool {sizes.pool} needs more images than --n_images {sizes.n_images}")
    return batches


class OursRunner:
    """A Trainer built for one variant, stepping through its pool of batches."""

    def __init__(self, variant: str, data: Any, batches: list[dict[str, Any]], sizes: Sizes):
        from training.config import ModelConfig, TrainConfig
        from training.trainer import Trainer

        parts = variant_parts(variant)
        mcfg = ModelConfig(
            precomp_dim=sizes.precomp_dim,
            joint_space=sizes.joint_space,
            word_dim=sizes.word_dim,
            num_layers=1,
            vocab_size=sizes.vocab_size,
            gru_loop="hoisted" if "hoisted" in parts else "keras",
        )
        tcfg = TrainConfig(
            batch_size=sizes.batch_size,
            seed=sizes.seed,
            jit_compile="xla" in parts,
            mixed_precision="bfloat16" if "bf16" in parts else "off",
            bucket_by_length="bucket" in parts,
        )
        gru = next((k for k in ("packed", "unrolled", "hoisted") if k in parts), None)
        # The trainer sets the global dtype policy; a built model keeps the one it was built
        # with, so the variants can live side by side.
        with tempfile.TemporaryDirectory() as tmp, patched_gru(gru):
            self.trainer = Trainer(mcfg, tcfg, data, tmp)
        self.batches = batches
        self.pool = sizes.pool
        self.meta = {
            "mean_padded_length": float(np.mean([int(b["tokens"].shape[1]) for b in batches]))
        }

    def step(self, i: int) -> float:
        return self.trainer.train_step(self.batches[i], 0)

    def warm_up(self) -> dict[str, Any]:
        return warm_up(self.step, self.pool)

    def timed_pass(self) -> dict[str, float]:
        return timed_pass(self.step, self.pool)

    def close(self) -> None:
        del self.trainer


# ---- machine, table, main ---------------------------------------------------------------------


def wait_for_load(limit: float, max_wait_s: float, poll_s: float = 15.0) -> float:
    """Poll the 1-minute load average until it is below `limit` (or time runs out)."""
    deadline = time.monotonic() + max_wait_s
    load = os.getloadavg()[0]
    while load >= limit and time.monotonic() < deadline:
        log.info("load average %.2f >= %.2f: waiting", load, limit)
        time.sleep(poll_s)
        load = os.getloadavg()[0]
    if load >= limit:
        log.warning("load average still %.2f after %.0f s: measuring anyway", load, max_wait_s)
    return load


def quiet_rounds(rows: list[dict[str, Any]], threads: int) -> list[int]:
    """The timed rounds in which every variant kept at least 0.75 x threads cores busy.

    In a round where another job took CPU, a step's wall time grows past its CPU time / cores
    (and the original's OpenMP threads spin, inflating its time most): those rounds are not
    a measurement of the code.
    """
    timed = [r["passes"] for r in rows if r.get("passes")]
    if not timed:
        return []
    return [
        k
        for k in range(min(len(p) for p in timed))
        if all(p[k]["cpu_ms"] >= QUIET_CORES * threads * p[k]["ms"] for p in timed)
    ]


def table(rows: list[dict[str, Any]], rounds: list[int], batch_size: int) -> str:
    """Markdown: variant, ms/step and pairs/s (medians over `rounds`), ratios to PyTorch and
    to our plain step, mean padded length, and cores busy (CPU time / wall time)."""

    def stat(row: dict[str, Any], key: str) -> float:
        return statistics.median(row["passes"][k][key] for k in rounds)

    ms_of = {r["variant"]: stat(r, "ms") for r in rows if r.get("passes")}
    baseline_ms, plain_ms = ms_of.get(TORCH), ms_of.get("plain")
    lines = [
        "| variant | ms/step | pairs/s | vs PyTorch | vs our plain | padded length | cores busy |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        if not row.get("passes"):
            note = str(row["note"]).replace("|", "/")  # a pipe would end the cell
            lines.append(f"| {row['variant']} | {note} | | | | | |")
            continue
        ms = ms_of[row["variant"]]
        to_torch = f"{baseline_ms / ms:.2f}x" if baseline_ms else "n/a"
        to_plain = f"{plain_ms / ms:.2f}x" if plain_ms else "n/a"
        lines.append(
            f"| {row['variant']} | {ms:.0f} | {1000.0 * batch_size / ms:.0f} | {to_torch} "
            f"| {to_plain} | {row['mean_padded_length']:.1f} | {stat(row, 'cpu_ms') / ms:.2f} |"
        )
    return "\n".join(lines)


def render(report: dict[str, Any]) -> str:
    """The header lines (date, machine, versions, sizes, load) and the table of a report."""
    info, sizes, rows = report["machine"], report["sizes"], report["rows"]
    repeats, threads = sizes["repeats"], sizes["threads"]
    quiet = quiet_rounds(rows, threads)
    rounds = quiet or list(range(repeats))
    torch_row = next((r for r in rows if r["variant"] == TORCH and r.get("passes")), None)
    bf16_ok = any(f in info["flags"] for f in BF16_FLAGS)
    flags = ", ".join(info["flags"]) or "none of avx2/avx512/bf16/amx"
    versions = report["versions"]
    if not quiet:
        how = (
            f"median of all {repeats} rounds: NO quiet round (other jobs took CPU throughout), "
            "so the ratios to PyTorch are not reliable"
        )
    elif len(quiet) < repeats:
        how = (
            f"median of the {len(quiet)} quiet rounds of {repeats} (rounds "
            f"{', '.join(str(k + 1) for k in quiet)}: every variant kept >= "
            f"{QUIET_CORES * threads:.1f} cores busy; the others, disturbed by other jobs, "
            "are left out here and kept in the JSON)"
        )
    else:
        how = f"median of {repeats} rounds, all quiet"
    load = report["load_at_start"], report["load_at_end"]
    lines = [
        f"- {dt.datetime.fromisoformat(report['date']):%Y-%m-%d %H:%M %Z}; CPU: {info['cpu']}, "
        f"{info['cores']} logical cores ({info['usable_cores']} usable); flags: "
        f"{flags}; bfloat16 variants "
        + (
            "run (native AVX512_BF16)"
            if bf16_ok
            else "run EMULATED (no AVX512_BF16/AMX; --force_bf16)"
            if report.get("force_bf16")
            else "skipped (no AVX512_BF16/AMX)"
        ),
        f"- TensorFlow {versions['tensorflow']} ({threads} intra-/inter-op threads), Keras "
        f"{versions['keras']}, numpy {info['numpy']}; "
        + (
            f"PyTorch {torch_row['torch']} (numpy {torch_row['numpy']}, "
            f"{torch_row['threads']} threads)"
            if torch_row
            else f"PyTorch baseline unavailable: {report['torch_error']}"
        ),
        f"- sizes: features {sizes['precomp_dim']}, joint {sizes['joint_space']}, word "
        f"{sizes['word_dim']}, vocabulary {sizes['vocab_size']}, batch {sizes['batch_size']}, "
        f"captions {CAPTION_MIN}-{CAPTION_MAX} tokens; {sizes['pool']} batches per pass, one "
        f"warm-up pass, then {repeats} interleaved rounds of one pass per variant",
        f"- {how}",
        "- load average (1/5/15 min) at start "
        + "/".join(f"{x:.2f}" for x in load[0])
        + ", at end "
        + "/".join(f"{x:.2f}" for x in load[1]),
    ]
    return "\n".join(lines) + "\n\n" + table(rows, rounds, sizes["batch_size"])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="4 batches, 2 rounds: a couple of minutes"
    )
    parser.add_argument(
        "--torch_python",
        default="/tmp/torchvenv/bin/python",
        help="interpreter with torch for the baseline ('' to skip it)",
    )
    parser.add_argument(
        "--variants",
        default=",".join(BASE_VARIANTS),
        help="comma-separated variants of ours: " + ", ".join(BASE_VARIANTS),
    )
    parser.add_argument(
        "--experimental",
        action="store_true",
        help="add the experimental GRU-loop variants: " + ", ".join(EXPERIMENTAL_VARIANTS),
    )
    parser.add_argument(
        "--force_bf16",
        action="store_true",
        help="run bf16 variants even without AVX512_BF16/AMX (emulated: slow)",
    )
    parser.add_argument("--pool", type=int, default=None, help="batches per pass (16; quick 4)")
    parser.add_argument("--repeats", type=int, default=None, help="timed passes (5; quick 2)")
    parser.add_argument("--n_images", type=int, default=None, help="synthetic images (1000)")
    parser.add_argument("--vocab_size", type=int, default=8000, help="vocabulary size")
    parser.add_argument("--batch_size", type=int, default=128, help="pairs per step")
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="threads of both sides (torch.set_num_threads, TF intra/inter-op; 2 = TF's "
        "default on this 2-core machine)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the synthetic data")
    parser.add_argument(
        "--wait_load",
        type=float,
        default=0.0,
        help="first wait until the 1-min load average is below this (0: don't)",
    )
    parser.add_argument("--wait_max", type=float, default=600.0, help="longest wait, seconds")
    parser.add_argument("--json_out", default=None, help="write every measurement as JSON here")
    parser.add_argument(
        "--from_json", default=None, help="print the table of an earlier --json_out, no run"
    )
    parser.add_argument(
        "--torch-only", dest="torch_only", action="store_true", help=argparse.SUPPRESS
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def sizes_from(args: argparse.Namespace) -> Sizes:
    """Sizes from the command line (--quick shrinks the pool, the passes and the data)."""
    quick = args.quick
    return Sizes(
        vocab_size=args.vocab_size,
        batch_size=args.batch_size,
        n_images=args.n_images or (300 if quick else 1000),
        pool=args.pool or (4 if quick else 16),
        repeats=args.repeats or (2 if quick else 5),
        threads=args.threads,
        seed=args.seed,
    )


def measure(runners: dict[str, Any], repeats: int) -> dict[str, dict[str, Any]]:
    """Warm every runner up, then `repeats` rounds of one timed pass each, interleaved.

    Interleaving (with the order rotated every round) spreads a shared machine's changing
    load over all the variants instead of penalising whichever ran during a busy minute.
    """
    results = {}
    for name, runner in runners.items():
        log.info("warm-up: %s", name)
        results[name] = {**runner.meta, **runner.warm_up(), "passes": []}
    names = list(runners)
    for r in range(repeats):
        log.info("timed round %d/%d", r + 1, repeats)
        for name in names[r % len(names) :] + names[: r % len(names)]:
            results[name]["passes"].append(runners[name].timed_pass())
    for res in results.values():
        res.update(summarise(res["passes"]))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.torch_only:
        sizes = Sizes(**json.loads(args.sizes)) if args.sizes else sizes_from(args)
        torch_worker(sizes, args.serve)
        return 0
    if args.from_json:
        print(render(json.loads(Path(args.from_json).read_text())))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sizes = sizes_from(args)
    info = machine()
    bf16_ok = any(f in info["flags"] for f in BF16_FLAGS)
    variants = [v for v in args.variants.split(",") if v]
    if args.experimental:
        variants += [v for v in EXPERIMENTAL_VARIANTS if v not in variants]
    unknown = [v for v in variants if not valid_variant(v)]
    if unknown:
        raise SystemExit(
            f"unknown --variants {unknown}: '+'-joined {sorted(OPTIONS)}, 'plain', or with "
            f"the 'exp:' prefix also {sorted(EXPERIMENTAL_OPTIONS)}"
        )
    skipped = [v for v in variants if "bf16" in variant_parts(v) and not bf16_ok]
    if args.force_bf16:
        skipped = []
    load_before = wait_for_load(args.wait_load, args.wait_max) if args.wait_load else None
    started = dt.datetime.now().astimezone()
    load_at_start = os.getloadavg()

    runners: dict[str, Any] = {}
    torch_error = None
    if args.torch_python:
        log.info("PyTorch baseline with %s", args.torch_python)
        try:
            runners[TORCH] = TorchRunner(args.torch_python, sizes)
        except (OSError, RuntimeError, ValueError) as exc:
            torch_error = str(exc)
            log.error("no PyTorch baseline: %s", exc)
    else:
        torch_error = "no --torch_python given"

    import keras
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(sizes.threads)
    tf.config.threading.set_inter_op_parallelism_threads(sizes.threads)
    try:
        data = make_train_data(sizes)
        batch_sets = {b: our_batches(data, sizes, b) for b in (False, True)}
        for variant in variants:
            if variant not in skipped:
                log.info("building: %s", variant)
                batches = batch_sets["bucket" in variant_parts(variant)]
                runners[variant] = OursRunner(variant, data, batches, sizes)
        keras.config.set_dtype_policy("float32")
        results = measure(runners, sizes.repeats)
    finally:
        for runner in runners.values():
            runner.close()
    load_at_end = os.getloadavg()

    for name, res in results.items():
        res["variant"] = name
        res["pairs_per_s"] = 1000.0 * sizes.batch_size / res["ms_per_step"]  # all rounds
    rows = [results[TORCH]] if TORCH in results else []
    if torch_error:
        rows.append({"variant": TORCH, "note": f"unavailable: {torch_error}"})
    for variant in variants:
        if variant in skipped:
            rows.append({"variant": variant, "note": "skipped: no avx512_bf16/amx on this CPU"})
        else:
            rows.append(results[variant])
    report = {
        "date": started.isoformat(),
        "machine": info,
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        "sizes": asdict(sizes),
        "load_before_wait": load_before,
        "load_at_start": load_at_start,
        "load_at_end": load_at_end,
        "torch_error": torch_error,
        "force_bf16": args.force_bf16,
        "quiet_rounds": quiet_rounds(rows, sizes.threads),
        "rows": rows,
    }
    print(render(report))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
