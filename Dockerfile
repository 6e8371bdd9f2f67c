# VSE++ Search: the CPU serving image.
#
#   docker build -t vsepp-search .                      # bakes the demo model and index
#   docker run --rm -p 8000:8000 vsepp-search           # serves them on http://localhost:8000
#   docker build --build-arg BAKE_DEMO=0 -t vsepp-search .   # no demo: serve mounted artifacts
#   docker build --build-arg DEMO_EPOCHS=1 --build-arg DEMO_TRAIN=2000 -t vsepp-search .  # CI's short demo
#   docker run --rm -p 8000:8000 -v "$PWD/runs/flickr8k:/models/flickr8k:ro" \
#       -v "$PWD/indexes/flickr8k:/indexes/flickr8k:ro" \
#       -e RUN_DIR=/models/flickr8k -e INDEX_DIR=/indexes/flickr8k vsepp-search
#
# The container runs docker/entrypoint.sh, the pipeline `make demo` and CI run: CMD names
# the stage (serve; `all` builds what is missing first, `train` and `index` are there too).
# docs/DOCKER.md describes the images and the compose file.

# Pinned by tag; pass --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:... to pin
# the digest as well. Every stage uses the same base so the virtualenv moves between them.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: the project and its dependencies in /opt/venv ------------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
# The dependencies first, in a layer of their own (a change to the code does not download
# TensorFlow again): the exact versions and hashes of requirements/image.lock.txt, which
# `make lock` makes from pyproject.toml's ranges, with TensorFlow's CPU-only wheel.
COPY requirements/image.lock.txt /tmp/image.lock.txt
RUN pip install --no-cache-dir --require-hashes -r /tmp/image.lock.txt
COPY pyproject.toml README.md ./
COPY vsepp/ vsepp/
COPY training/ training/
COPY index/ index/
COPY service/ service/
# The project alone: --no-deps, and --no-build-isolation builds it with the locked setuptools
# rather than whatever the index serves today. (No `pip check`: the project's metadata asks
# for `tensorflow`, which tensorflow-cpu provides under another distribution name.)
# -P: import the installed packages, not the sources in the working directory.
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
    && python -P -c "import index.build, service.main, training.train"

# --- demo: the demo set, its model and its index, made by the pipeline's own stages ------
FROM build AS demo
# 1 (the default) bakes the demo into the image, a few minutes of CPU at build time; 0
# leaves /artifacts empty (the image then serves what RUN_DIR and INDEX_DIR point to).
ARG BAKE_DEMO=1
# The demo's training epochs and training images: the defaults are `make demo`'s full
# recipe; CI bakes a short one (DEMO_EPOCHS=1 DEMO_TRAIN=2000) to build in minutes.
ARG DEMO_EPOCHS=6
ARG DEMO_TRAIN=6000
ENV PYTHON=/opt/venv/bin/python \
    DATASET=demo \
    DATA_DIR=/artifacts/data/demo \
    RUN_DIR=/artifacts/runs/demo \
    INDEX_DIR=/artifacts/indexes/demo \
    TF_CPP_MIN_LOG_LEVEL=2
COPY --chmod=0755 docker/entrypoint.sh docker/entrypoint.sh
RUN mkdir -p /artifacts \
    && { [ "$BAKE_DEMO" = 0 ] || [ "$BAKE_DEMO" = 1 ] || { echo "BAKE_DEMO=$BAKE_DEMO: 0 or 1" >&2; exit 1; }; } \
    && for n in "DEMO_EPOCHS=$DEMO_EPOCHS" "DEMO_TRAIN=$DEMO_TRAIN"; do \
        case "${n#*=}" in ''|0*|*[!0-9]*) echo "$n: a positive whole number" >&2; exit 1 ;; esac; \
    done \
    && if [ "$BAKE_DEMO" = 1 ]; then \
        for stage in demo-data train index; do \
            EPOCHS="$DEMO_EPOCHS" docker/entrypoint.sh "$stage" || exit 1; \
        done; \
    fi

# --- runtime: the virtualenv, the entrypoint and the baked artifacts, run as `app` -------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="VSE++ Search" \
      org.opencontainers.image.description="Cross-modal image/caption retrieval (VSE++), CPU serving image"
# A fixed uid/gid, the same as in docker/train.Dockerfile, so both images can write the
# artifacts volume of docker-compose.yml.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /home/app --create-home \
        --shell /usr/sbin/nologin app \
    && mkdir /artifacts \
    && chown 10001:10001 /artifacts
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY --chmod=0755 docker/entrypoint.sh docker/entrypoint.sh
# /artifacts belongs to `app`: a named volume mounted there starts with the image's
# content and ownership (the baked demo, or an empty directory `app` can write).
COPY --from=demo --chown=10001:10001 /artifacts /artifacts
# HOST=0.0.0.0: inside a container the server must listen beyond loopback to be reached.
# DATA_DIR, RUN_DIR and INDEX_DIR point at the baked demo; set RUN_DIR and INDEX_DIR to
# serve mounted artifacts instead.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHON=/opt/venv/bin/python \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    HOST=0.0.0.0 \
    PORT=8000 \
    WORKERS=1 \
    DATASET=demo \
    DATA_DIR=/artifacts/data/demo \
    RUN_DIR=/artifacts/runs/demo \
    INDEX_DIR=/artifacts/indexes/demo
USER 10001:10001
EXPOSE 8000
# /health answers 503 while the model and the index load, 200 once they are in; urllib
# raises on anything but 2xx, so no curl is needed.
HEALTHCHECK --interval=15s --timeout=5s --start-period=90s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8000'), timeout=4)"]
ENTRYPOINT ["docker/entrypoint.sh"]
CMD ["serve"]
