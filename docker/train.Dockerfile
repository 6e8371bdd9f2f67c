# VSE++ Search: the GPU training image, on TensorFlow's own GPU image (CUDA and cuDNN inside).
#
#   docker build -f docker/train.Dockerfile -t vsepp-search-train .
#   docker run --rm --gpus all -e DATASET=flickr8k \
#       -v "$PWD/data:/app/data:ro" -v "$PWD/runs:/app/runs" vsepp-search-train
#   docker run --rm -e DATASET=flickr8k -v "$PWD/data:/app/data:ro" \
#       -v "$PWD/runs:/app/runs" -v "$PWD/indexes:/app/indexes" vsepp-search-train index
#
# It runs docker/entrypoint.sh like the serving image: CMD `train` (train on DATA_DIR, export
# the best epoch to RUN_DIR, test metrics beside it), or `index`. The defaults follow the
# repository's layout under /app (data/$DATASET, runs/$DATASET, indexes/$DATASET); the runs
# mount must be writable by uid 10001 (or add --user). TRAIN_ARGS passes more flags, e.g.
# TRAIN_ARGS="--mixed_precision bfloat16 --strategy mirrored". See docs/DOCKER.md.

ARG TF_IMAGE=tensorflow/tensorflow:2.21.0-gpu
FROM ${TF_IMAGE}
LABEL org.opencontainers.image.title="VSE++ Search trainer" \
      org.opencontainers.image.description="Trains and indexes VSE++ models on GPUs"
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONUNBUFFERED=1 \
    PYTHON=python3
# The same uid/gid as the serving image (Dockerfile): both write the compose volume.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /home/app --create-home \
        --shell /usr/sbin/nologin app \
    && mkdir -p /home/app/.keras /artifacts \
    && chown 10001:10001 /home/app/.keras /artifacts
WORKDIR /app
# The dependencies as pyproject.toml bounds them; TensorFlow is the base image's, which
# satisfies the pin, so pip keeps it (and its CUDA build). Python must be 3.11, as
# pyproject.toml requires: the install below fails loudly otherwise.
COPY pyproject.toml README.md ./
RUN python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && python3 -m pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt
COPY vsepp/ vsepp/
COPY training/ training/
COPY index/ index/
COPY service/ service/
# The sources stay in /app (the working directory, so `python -m training.train` imports
# them first); the install registers the package and its metadata.
RUN python3 -m pip install --no-cache-dir --no-deps . \
    && python3 -P -c "import index.build, training.train" \
    && mkdir -p data runs indexes \
    && chown 10001:10001 data runs indexes
COPY --chmod=0755 docker/entrypoint.sh docker/entrypoint.sh
USER 10001:10001
ENTRYPOINT ["docker/entrypoint.sh"]
CMD ["train"]
