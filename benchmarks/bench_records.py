"""Loading the records of an index of N images: memory-mapped Arrow columns (vsepp-index/2)
against the JSON of before (vsepp-index/1), in one run.

    .venv/bin/python benchmarks/bench_records.py run --n 10000000 --json_n 1000000 \\
        --work_dir /work/tmp/bench-records --baseline_root /tmp/base [--out results.json]

`run` generates N image records (ids in folders of 1,000, a stored path, size, source, capture
time, camera for 70 %, GPS for 30 %; no captions: a folder of photos) with a flat FAISS index
of 8-dimensional vectors, writes them as an index directory in the Arrow format and, for the
sizes given to --json_n, its twin in the JSON format (images.json as the writer of before
wrote it: image_id, path, width, height, source; the capture fields, which that format never
had, left out, so the JSON side has less to parse than the Arrow side has columns). Then each
index is loaded by `load_index` in a fresh process, `load` (below), which reports the wall
time of the load and the process's anonymous memory (RssAnon, /proc/self/status) before and
after it, plus 1,000 id lookups and 100 result records. The JSON side is loaded by the code
of before when --baseline_root names a source tree of it (`git archive main | tar -x -C
/tmp/base`), and by this code as well (its reader of the old format). The machine (CPU,
flags, load average before and after each load) is printed beside the figures: a ratio taken
at a 1-minute load average above 1.5 is void.

    .venv/bin/python benchmarks/bench_records.py load --index_dir DIR [--root SRC]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DIM = 8


def rss_anon_kib(field: str = "RssAnon") -> int:
    """This process's anonymous resident memory (KiB); `field` "RssFile": its resident
    file-backed pages (the mapped records: page cache, shared with other processes)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return -1


# --------------------------------------------------------------------------- load (child)


def load(index_dir: Path) -> dict[str, Any]:
    """Load `index_dir` with whichever `index` package is first on sys.path; the figures."""
    import numpy as np

    before = rss_anon_kib()
    t0 = time.perf_counter()
    from index.store import load_index  # imported inside: its import is not the load

    t_import = time.perf_counter() - t0
    before = rss_anon_kib()
    t0 = time.perf_counter()
    loaded = load_index(index_dir)
    seconds = time.perf_counter() - t0
    after = rss_anon_kib()
    n = len(loaded.image_ids)
    rng = np.random.default_rng(0)
    rows = rng.integers(0, n, 1000)
    ids = [loaded.image_ids[int(r)] for r in rows]
    t0 = time.perf_counter()
    found = [loaded.image_row(i) for i in ids]
    lookup_us = (time.perf_counter() - t0) / len(ids) * 1e6
    assert found == [int(r) for r in rows], "image_row disagrees with image_ids"
    t0 = time.perf_counter()
    records = [loaded.image_records[int(r)] for r in rows[:100]]
    record_us = (time.perf_counter() - t0) / len(records) * 1e6
    return {
        "index_dir": str(index_dir),
        "format": loaded.manifest["format"],
        "images": n,
        "import_s": round(t_import, 2),
        "load_s": round(seconds, 2),
        "rss_anon_before_mib": round(before / 1024, 1),
        "rss_anon_after_mib": round(after / 1024, 1),
        "rss_anon_load_mib": round((after - before) / 1024, 1),
        "rss_anon_end_mib": round(rss_anon_kib() / 1024, 1),
        "rss_file_end_mib": round(rss_anon_kib("RssFile") / 1024, 1),
        "image_row_us": round(lookup_us, 1),
        "record_us": round(record_us, 1),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
    }


# --------------------------------------------------------------------------- make


def _floats(values: Any) -> Any:
    """float64 with NaN as null."""
    import pyarrow as pa

    return pa.array(values, pa.float64(), from_pandas=True)


def make(n: int, out: Path, json_twin: Path | None) -> None:
    """An index directory of `n` generated images in the Arrow format at `out`, and its twin
    in the JSON format at `json_twin`."""
    import datetime as dt

    import faiss
    import numpy as np
    import pyarrow as pa

    from index import store
    from index.columnar import with_lookup_columns, write_table
    from index.records import BUILT_IN

    rng = np.random.default_rng(0)
    ids = [f"{2000 + i // 1_000_000}/{i // 1000 % 1000:03d}/IMG_{i:08d}.jpg" for i in range(n)]
    start = dt.datetime(2015, 1, 1, tzinfo=dt.UTC).timestamp()
    has_camera = rng.random(n) < 0.7
    has_gps = rng.random(n) < 0.3
    makes = np.array(["Canon", "NIKON CORPORATION", "Apple", "SONY"])[rng.integers(0, 4, n)]
    columns = {
        "image_id": pa.array(ids, pa.string()),
        "path": pa.array(ids, pa.string()),
        "width": pa.array(rng.integers(640, 6000, n), pa.int64()),
        "height": pa.array(rng.integers(480, 4000, n), pa.int64()),
        "aliases": pa.array([[] for _ in range(n)], pa.list_(pa.string())),
        "source": pa.array([b"/photos/" + i.encode() for i in ids], pa.binary()),
        "folder": pa.array([i.rsplit("/", 1)[0] for i in ids], pa.string()),
        "taken_at": pa.array(
            ((start + rng.random(n) * 3e8) * 1e6).astype(np.int64), BUILT_IN["taken_at"]
        ),
        "taken_at_source": pa.array(np.where(has_camera, "exif", "mtime"), pa.string()),
        "camera_make": pa.array(np.where(has_camera, makes, None), pa.string()),
        "camera_model": pa.array(np.where(has_camera, "Model 7", None), pa.string()),
        "lat": _floats(np.where(has_gps, rng.uniform(-90, 90, n), np.nan)),
        "lon": _floats(np.where(has_gps, rng.uniform(-180, 180, n), np.nan)),
    }
    images = pa.table(columns)
    captions = pa.table({"caption_id": pa.array([], pa.large_string()),
                         "image_row": pa.array([], pa.int64()),
                         "text": pa.array([], pa.large_string())})  # fmt: skip
    images, captions = with_lookup_columns(images, captions)
    index = faiss.IndexFlatIP(DIM)
    for lo in range(0, n, 1_000_000):
        x = rng.standard_normal((min(n, lo + 1_000_000) - lo, DIM)).astype(np.float32)
        index.add(x / np.linalg.norm(x, axis=1, keepdims=True))
    facts = {"index_type": "flat", "params": {}, "exact": True, "recall_at_10": 1.0}
    manifest: dict[str, Any] = {
        "format": store.FORMAT, "build_id": "bench", "model_hash": "bench", "dim": DIM,
        "metric": "inner_product", "normalized": True,
        "images": {**facts, "count": n}, "captions": {**facts, "count": 0},
        "source": {"kind": "bench_records"}, "skipped_images": [], "versions": store.versions(),
    }  # fmt: skip
    out.mkdir(parents=True)
    (out / "images").mkdir()
    faiss.write_index(index, str(out / "images.faiss"))
    faiss.write_index(faiss.IndexFlatIP(DIM), str(out / "captions.faiss"))
    write_table(out / "images.arrow", images)
    write_table(out / "captions.arrow", captions)
    store._finish_manifest(out, json.loads(json.dumps(manifest)))
    if json_twin is None:
        return
    json_twin.mkdir(parents=True)
    (json_twin / "images").mkdir()
    for name in ("images.faiss", "captions.faiss"):
        os.link(out / name, json_twin / name)
    keep = ["image_id", "path", "width", "height", "source"]

    def rows() -> Any:
        for batch in images.select(keep).to_batches(max_chunksize=100_000):
            for row in batch.to_pylist():
                row["source"] = os.fsdecode(row["source"])
                yield row

    store._write_json_rows(json_twin / "images.json", rows(), ascii_only=True)
    store._write_json_rows(json_twin / "captions.json", iter(()))
    legacy = {**manifest, "format": store.JSON_FORMAT}
    legacy["files"] = {
        p.name: {"bytes": p.stat().st_size} for p in sorted(json_twin.iterdir()) if p.is_file()
    }
    (json_twin / "manifest.json").write_text(json.dumps(legacy, indent=1))


# --------------------------------------------------------------------------- run (parent)


def _child(args: list[str], root: Path) -> dict[str, Any]:
    """Run this script's `args` in a fresh process with `root`'s `index` package first."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    load_before = [round(x, 2) for x in os.getloadavg()]
    done = subprocess.run([sys.executable, __file__, *args, "--root", str(root)], env=env,
                          capture_output=True, text=True, check=False, cwd=root)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"{args} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["load_avg_before"] = load_before
    return result


def run(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from machine import machine

    report: dict[str, Any] = {"machine": machine(), "runs": []}
    print(json.dumps(report["machine"]))
    work: Path = args.work_dir
    for n in sorted(set(args.n)):
        arrow, twin = work / f"arrow-{n}", work / f"json-{n}"
        with_json = n in args.json_n
        if not (arrow / "manifest.json").is_file() or (with_json and not twin.exists()):
            import shutil

            shutil.rmtree(arrow, ignore_errors=True)
            shutil.rmtree(twin, ignore_errors=True)
            t0 = time.perf_counter()
            make_args = ["make", "--n", str(n), "--out", str(arrow)]
            if with_json:
                make_args += ["--json_twin", str(twin)]
            subprocess.run([sys.executable, __file__, *make_args], check=True, cwd=REPO,
                           env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
            print(f"made {n:,} records in {time.perf_counter() - t0:.0f} s", flush=True)
        sides = [("arrow", arrow, REPO)]
        if with_json:
            sides.append(("json, this code", twin, REPO))
            if args.baseline_root is not None:
                sides.append(("json, code of before", twin, args.baseline_root))
        for name, index_dir, root in sides:
            for repeat in range(args.repeats):
                result = _child(["load", "--index_dir", str(index_dir)], root)
                result.update(way=name, n=n, repeat=repeat,
                              bytes={p.name: p.stat().st_size for p in index_dir.iterdir()
                                     if p.is_file()})  # fmt: skip
                report["runs"].append(result)
                print(json.dumps(result), flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--n", type=int, nargs="+", default=[1_000_000, 10_000_000])
    r.add_argument("--json_n", type=int, nargs="*", default=[1_000_000])
    r.add_argument("--work_dir", type=Path, required=True)
    r.add_argument("--baseline_root", type=Path, default=None)
    r.add_argument("--repeats", type=int, default=1)
    r.add_argument("--out", type=Path, default=None)
    m = sub.add_parser("make")
    m.add_argument("--n", type=int, required=True)
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("--json_twin", type=Path, default=None)
    ld = sub.add_parser("load")
    ld.add_argument("--index_dir", type=Path, required=True)
    ld.add_argument("--root", type=Path, default=REPO)
    args = p.parse_args()
    if args.command == "run":
        return run(args)
    if args.command == "make":
        make(args.n, args.out, args.json_twin)
        return 0
    sys.path.insert(0, str(args.root))
    print(json.dumps(load(args.index_dir)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
