#!/usr/bin/env bash
# `make lock`: pin, with hashes, the versions that pyproject.toml's ranges resolve to today.
#
#   requirements/lock.txt        the project with its dev and beam extras, for Python 3.11 to 3.13 on
#                                any platform: what `make test` ran with when it was made
#                                (pip install --require-hashes -r requirements/lock.txt)
#   requirements/image.lock.txt  the serving image's dependencies (Dockerfile): the same pins,
#                                with TensorFlow's CPU-only wheel, tensorflow-cpu, on x86_64
#
# `make install` (and so `make test`, `make demo`, CI) installs lock.txt, then the project with
# --no-deps; the Docker build installs from image.lock.txt. Settings: UV (default uv on PATH),
# PYTHON (default python3, 3.11 or later for tomllib).
set -euo pipefail
cd "$(dirname "$0")/.."

UV=${UV:-uv}
PYTHON=${PYTHON:-python3}
compile=("$UV" pip compile --quiet --universal --python-version 3.11 --generate-hashes
    --custom-compile-command "make lock")

"${compile[@]}" pyproject.toml --extra dev --extra beam -o requirements/lock.txt

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# pyproject.toml's dependencies with tensorflow replaced by tensorflow-cpu (same range) where
# that wheel exists (Linux and Windows on x86_64); elsewhere tensorflow's wheel has no CUDA
# kernels anyway. lock.txt constrains the rest to the same versions.
"$PYTHON" - >"$tmp/image.in" <<'PY'
import re
import tomllib

with open("pyproject.toml", "rb") as f:
    deps = tomllib.load(f)["project"]["dependencies"]
for dep in deps:
    if re.match(r"tensorflow\b(?![-_])", dep):
        spec = dep[len("tensorflow") :]
        print(f"tensorflow-cpu{spec}; platform_machine == 'x86_64' or platform_machine == 'AMD64'")
        print(f"tensorflow{spec}; platform_machine != 'x86_64' and platform_machine != 'AMD64'")
    else:
        print(dep)
PY
grep -q '^tensorflow-cpu' "$tmp/image.in" || { echo "lock.sh: no tensorflow in pyproject.toml" >&2; exit 1; }
"${compile[@]}" "$tmp/image.in" --constraint requirements/lock.txt -o requirements/image.lock.txt
# The temporary input's path means nothing to a reader: name its origin instead.
sed -i "s|$tmp/image.in|pyproject.toml (tensorflow -> tensorflow-cpu)|g" requirements/image.lock.txt
