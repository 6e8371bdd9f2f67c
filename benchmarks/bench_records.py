"""Peak RSS of writing the images.json of 10M records: `index.store`'s row writer against
one `json.dump` of the whole list (what the store did before).

    .venv/bin/python benchmarks/bench_records.py rows /work/tmp/rows.json
    .venv/bin/python benchmarks/bench_records.py dump /work/tmp/dump.json

Run each way in its own process: the peak (getrusage) is the process's.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from index import store
from index.store import ImageRecord


def main() -> int:
    """Build the records, write them one way, print the peaks."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("way", choices=("rows", "dump"))
    p.add_argument("out", type=Path)
    p.add_argument("--n", type=int, default=10_000_000)
    args = p.parse_args()
    records = [ImageRecord(str(i), None) for i in range(args.n)]
    held = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    t0 = time.perf_counter()
    if args.way == "rows":
        store._write_json_rows(args.out, (r.to_json() for r in records), ascii_only=True)
    else:
        store._write_json(args.out, [r.to_json() for r in records], ascii_only=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{args.way}: records held {held:.2f} GiB, peak {peak:.2f} GiB, "
          f"write {time.perf_counter() - t0:.0f} s, {args.out.stat().st_size:,} B")  # fmt: skip
    args.out.unlink()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
