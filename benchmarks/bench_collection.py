"""Benchmark building an index of a folder of photos against the image encoder's forward pass.

    .venv/bin/python benchmarks/bench_collection.py --cnn tiny resnet50 --images 400 \\
        --rss_sizes 10000 100000

For each backbone (weights none, crop 224; `tiny` is the demo CNN) and each `--precision`
(float32, and auto: bfloat16 where the CPU has AVX512_BF16 or AMX), one run:
- decode alone: the folder's files read and put in canonical form (`vsepp.images`), then
  decoded and cropped to 224 as the exported encoder does (`eval_images_from_bytes`), in
  batches, in this process;
- forward alone: the exported image encoder on already-decoded 224x224 uint8 tensors;
- the stream: a folder of `--images` generated JPEGs of camera-like sizes (640x480 up to
  4000x3000, one in five with an EXIF orientation) indexed by `index.build --images_dir` in
  a child process; its streaming rate (walk, read, decode, embed, write shards; from the
  build's summary) and its whole-build rate (with process start, model load and FAISS).
  Aim: stream >= 0.85 x 1 / (t_decode + t_forward), the pipeline adding no more than 15 %
  to the work itself; stream / forward is reported beside it;
- peak RSS (`/usr/bin/time`'s maximum resident set of the build process) of
  builds of `--rss_sizes` small images (256x192), whose ratio shows memory stays bounded
  (aim: the larger within 1.2x of the smaller, plus the index itself).

Prints one JSON line per measurement and a summary table.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CAMERA_SIZES = ((640, 480), (1280, 960), (1600, 1200), (2048, 1536), (3264, 2448), (4000, 3000))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cnn", nargs="*", default=["tiny", "resnet50", "resnet152"])
    p.add_argument("--images", type=int, default=400, help="camera-sized JPEGs per backbone")
    p.add_argument("--rss_sizes", type=int, nargs="*", default=[10_000, 100_000])
    p.add_argument(
        "--rss_image_size",
        type=int,
        default=224,
        help="the RSS runs' model input size (smaller: the same memory story, sooner)",
    )
    p.add_argument("--precision", nargs="*", default=["float32", "auto"])
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    return p.parse_args(argv)


def camera_jpeg(i: int, rng: np.random.Generator, size: tuple[int, int] | None = None) -> bytes:
    """A smooth photo-like JPEG; one in five carries an EXIF orientation."""
    w, h = size or CAMERA_SIZES[i % len(CAMERA_SIZES)]
    small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    image = Image.fromarray(small, "RGB").resize((w, h), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    exif = Image.Exif()
    if i % 5 == 0:
        exif[0x0112] = (3, 6, 8)[i % 3]
    image.save(out, "JPEG", quality=88, exif=exif)
    return out.getvalue()


def make_folder(root: Path, n: int, size: tuple[int, int] | None = None) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        sub = root / f"{i // 1000:03d}"
        sub.mkdir(exist_ok=True)
        (sub / f"IMG_{i:06d}.jpg").write_bytes(camera_jpeg(i, rng, size))
    return root


def export(cnn: str, out: Path, image_size: int = 224) -> Path:
    """An untrained model with backbone `cnn` (weights none), exported as training does."""
    from training.backbones import preprocess_for
    from training.config import ModelConfig
    from training.export import export_model
    from training.images import ImageConfig
    from training.model import build_image_encoder, build_text_encoder
    from training.text import Vocabulary

    vocab = Vocabulary.build(["a photo of a thing"] * 4, min_count=1)
    resize = image_size * 8 // 7  # 224 -> 256, as the paper's eval transform
    cfg = ModelConfig(cnn=cnn, cnn_weights="none", image_size=image_size, resize_size=resize,
                      joint_space=256, word_dim=32, vocab_size=len(vocab))  # fmt: skip
    image_cfg = ImageConfig(image_size, resize, preprocess_for(cnn))
    export_model(out, build_image_encoder(cfg), build_text_encoder(cfg), vocab, cfg, image_cfg)
    return out


def forward_rate(model_dir: Path, batch_size: int, precision: str, seconds: float = 20.0) -> float:
    """Images/s of the exported image encoder on already-decoded 224x224 uint8 tensors."""
    from vsepp.model_dir import load_encoders

    encoders = load_encoders(model_dir, precision)
    batch = np.random.default_rng(1).integers(0, 256, (batch_size, 224, 224, 3), dtype=np.uint8)
    encoders.encode_image_arrays(batch)  # trace
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or done < 2 * batch_size:
        encoders.encode_image_arrays(batch)
        done += batch_size
    return done / (time.perf_counter() - start)


def decode_rate(cnn: str, folder: Path, batch_size: int, image_size: int = 224) -> float:
    """Images/s of reading the folder's files and decoding them as the exported encoder
    does before its network (canonical form, then `eval_images_from_bytes`)."""
    import tensorflow as tf

    from training.backbones import preprocess_for
    from training.images import ImageConfig, eval_images_from_bytes
    from vsepp.images import read_image_file

    cfg = ImageConfig(image_size, image_size * 8 // 7, preprocess_for(cnn))
    decode = tf.function(
        lambda blobs: eval_images_from_bytes(blobs, cfg),
        input_signature=[tf.TensorSpec([None], tf.string)],
    )
    files = sorted(folder.rglob("*.jpg"))
    # The min_side the build passes: the model's (what its decoder drafts a JPEG to).
    side = cfg.resize_size
    decode(tf.constant([read_image_file(files[0], min_side=side)]))  # trace
    start = time.perf_counter()
    for at in range(0, len(files), batch_size):
        blobs = [read_image_file(f, min_side=side) for f in files[at : at + batch_size]]
        decode(tf.constant(blobs)).numpy()
    return len(files) / (time.perf_counter() - start)


def timed_build(
    model_dir: Path, folder: Path, index_dir: Path, batch_size: int, precision: str = "auto"
) -> dict[str, Any]:
    """Run `index.build --images_dir` in a child; wall time and its peak RSS.

    The child runs under /usr/bin/time: a process forked from this one would inherit its
    peak RSS (TensorFlow and a model are loaded here), so only a fresh parent reports the
    build's own."""
    argv = ["/usr/bin/time", "-f", "maxrss_kib=%M",
            sys.executable, "-m", "index.build", "--model_dir", str(model_dir),
            "--images_dir", str(folder), "--index_dir", str(index_dir),
            "--batch_size", str(batch_size), "--precision", precision,
            "--log_level", "WARNING"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        child = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=err)
        child.wait()
        seconds = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if child.returncode != 0:
        raise RuntimeError(stderr[-3000:])
    manifest = json.loads((index_dir / "manifest.json").read_text())
    summary = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    # The streaming part alone (walk, read, decode, embed, shards), from the build's summary.
    rate = re.search(r"\(([0-9.]+) images/s\)", summary)
    return {
        "seconds": round(seconds, 2),
        "stream_images_per_s": float(rate.group(1)) if rate else None,
        "images": manifest["images"]["count"],
        "images_per_s": round(manifest["images"]["count"] / seconds, 2),
        "peak_rss_mib": round(int(re.findall(r"maxrss_kib=(\d+)", stderr)[-1]) / 1024, 1),
        # The index itself (FAISS files and records, not the copied images), which the aim
        # allows on top.
        "index_mib": round(
            sum(f.stat().st_size for f in index_dir.iterdir() if f.is_file()) / 2**20, 1
        ),
        "summary": summary,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-collection-"))
    print(json.dumps({"machine": platform.processor() or platform.machine(),
                      "cpus": os.cpu_count(), "load": os.getloadavg()}))  # fmt: skip
    folder = make_folder(work / "camera", args.images)
    rows = []
    for cnn in args.cnn:
        model = export(cnn, work / f"model-{cnn}")
        decode = decode_rate(cnn, folder, args.batch_size)
        for precision in args.precision:
            forward = forward_rate(model, args.batch_size, precision)
            index_dir = work / f"index-{cnn}-{precision}"
            build = timed_build(model, folder, index_dir, args.batch_size, precision)
            # What decoding and the network take together, one after the other.
            work_rate = 1.0 / (1.0 / decode + 1.0 / forward)
            stream = build["stream_images_per_s"] or 0.0
            row = {"cnn": cnn, "precision": precision,
                   "image_precision": json.loads((index_dir / "manifest.json").read_text())
                   .get("model", {}).get("precision"),
                   "decode_images_per_s": round(decode, 2),
                   "forward_images_per_s": round(forward, 2), **build,
                   "stream_over_work": round(stream / work_rate, 3),
                   "stream_over_forward": round(stream / forward, 3),
                   "build_over_forward": round(build["images_per_s"] / forward, 3),
                   "load": os.getloadavg()}  # fmt: skip
            print(json.dumps(row), flush=True)
            rows.append(row)
    rss = []
    if args.rss_sizes:
        model = work / f"model-tiny-{args.rss_image_size}"
        if not model.exists():
            export("tiny", model, args.rss_image_size)
        for n in sorted(args.rss_sizes):
            small = make_folder(work / f"small-{n}", n, (256, 192))
            got = timed_build(model, small, work / f"index-small-{n}", args.batch_size)
            print(json.dumps({"rss_images": n, **got}))
            rss.append((n, got))
    print(
        "\n| backbone | precision | decode img/s | forward img/s | stream img/s | "
        "stream / (1 / (t_decode + t_forward)) | stream / forward | whole build img/s |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        aim = "held" if r["stream_over_work"] >= 0.85 else "missed"
        print(f"| {r['cnn']} | {r['precision']} ({r['image_precision']}) | "
              f"{r['decode_images_per_s']} | {r['forward_images_per_s']} | "
              f"{r['stream_images_per_s']} | {r['stream_over_work']} ({aim}) | "
              f"{r['stream_over_forward']} | {r['images_per_s']} |")  # fmt: skip
    for n, got in rss:
        print(f"peak RSS of a {n}-image build: {got['peak_rss_mib']} MiB ({got['seconds']} s), "
              f"index files {got['index_mib']} MiB")  # fmt: skip
    if len(rss) >= 2:
        (n0, small_run), (n1, large_run) = rss[0], rss[-1]
        # The aim: the large build's peak within 1.2x the small one's, plus its index.
        allowed = 1.2 * small_run["peak_rss_mib"] + large_run["index_mib"]
        verdict = "held" if large_run["peak_rss_mib"] <= allowed else "missed"
        print(f"{n1} vs {n0} images: {large_run['peak_rss_mib']} MiB against 1.2 x "
              f"{small_run['peak_rss_mib']} + {large_run['index_mib']} = {allowed:.1f} MiB: "
              f"{verdict}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
