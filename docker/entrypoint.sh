#!/usr/bin/env bash
# VSE++ Search pipeline, one stage by name: demo-data | train | index | serve | all.
#
# The same script runs `make demo`, CI's end-to-end test and the Docker images. Each stage
# skips itself when its output exists and is valid (FORCE=1 redoes it). Settings come from
# the environment, with defaults for the built-in demo set:
#   DATASET=demo|flickr8k|flickr30k   DATA_DIR=data/$DATASET   RUN_DIR=runs/$DATASET
#   INDEX_DIR=indexes/$DATASET        EPOCHS, CNN, CNN_WEIGHTS, BATCH_SIZE, TRAIN_ARGS
#   DEMO_TRAIN, DEMO_VAL, DEMO_TEST   HOST=127.0.0.1  PORT=8000  WORKERS=1  PYTHON=python
set -euo pipefail

PYTHON=${PYTHON:-python}
DATASET=${DATASET:-demo}
DATA_DIR=${DATA_DIR:-data/$DATASET}
RUN_DIR=${RUN_DIR:-runs/$DATASET}
INDEX_DIR=${INDEX_DIR:-indexes/$DATASET}
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}
WORKERS=${WORKERS:-1}
FORCE=${FORCE:-0}
TRAIN_ARGS=${TRAIN_ARGS:-}

log() { printf '[entrypoint] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

case "$DATASET" in
    demo | flickr8k)
        IMAGES_PATH=$DATA_DIR/Flicker8k_Dataset
        TEXTS_PATH=$DATA_DIR/Flickr8k.token.txt
        TRAIN_SPLIT=$DATA_DIR/Flickr_8k.trainImages.txt
        VAL_SPLIT=$DATA_DIR/Flickr_8k.devImages.txt
        TEST_SPLIT=$DATA_DIR/Flickr_8k.testImages.txt
        ;;
    flickr30k)
        IMAGES_PATH=$DATA_DIR/flickr30k-images
        TEXTS_PATH=$DATA_DIR/results_20130124.token
        [ -f "$TEXTS_PATH" ] || TEXTS_PATH=$DATA_DIR/results.token
        TRAIN_SPLIT=$DATA_DIR/train.txt
        VAL_SPLIT=$DATA_DIR/val.txt
        TEST_SPLIT=$DATA_DIR/test.txt
        ;;
    *) die "DATASET must be demo, flickr8k or flickr30k, not '$DATASET'" ;;
esac

if [ "$DATASET" = demo ]; then
    # The demo recipe: a tiny CNN trained from scratch (no download), sum-of-violations
    # warm-up for one epoch then max violation, no flips (captions say left and right).
    MODEL_ARGS=(--cnn "${CNN:-tiny}" --cnn_weights "${CNN_WEIGHTS:-none}" --crop_size 64
        --resize_size 64 --no_hflip --joint_space 256 --word_dim 128 --learning_rate 1e-3
        --max_violation_after 1 --epochs "${EPOCHS:-6}" --lr_update 5 --cache)
else
    MODEL_ARGS=(--cnn "${CNN:-resnet152}" --cnn_weights "${CNN_WEIGHTS:-imagenet}"
        --epochs "${EPOCHS:-30}")
fi

data_ready() { [ -f "$TEXTS_PATH" ] && [ -f "$TRAIN_SPLIT" ] && [ -f "$TEST_SPLIT" ]; }

model_ready() {
    "$PYTHON" -c 'import sys; from vsepp.model_dir import read_model_manifest as r; r(sys.argv[1])' \
        "$RUN_DIR" 2>/dev/null
}

# The index is valid when it loads and was built with the model now in RUN_DIR.
index_ready() {
    "$PYTHON" - "$RUN_DIR" "$INDEX_DIR" <<'PY' 2>/dev/null
import sys
from vsepp.model_dir import read_model_manifest
from index.store import load_index
load_index(sys.argv[2], expected_model_hash=read_model_manifest(sys.argv[1])["content_hash"])
PY
}

stage_demo_data() {
    if [ "$FORCE" != 1 ] && data_ready; then
        log "demo-data: $DATA_DIR is there, skipped"
        return
    fi
    [ "$DATASET" = demo ] || die "no $DATASET data in $DATA_DIR: see docs/training.md, 'Datasets'"
    log "demo-data: writing the demo set to $DATA_DIR"
    "$PYTHON" -m training.demo_data --out "$DATA_DIR" --force \
        --train "${DEMO_TRAIN:-6000}" --val "${DEMO_VAL:-500}" --test "${DEMO_TEST:-1000}"
}

stage_train() {
    if [ "$FORCE" != 1 ] && model_ready; then
        log "train: $RUN_DIR holds a model, skipped"
        return
    fi
    data_ready || die "train: no dataset in $DATA_DIR (run the demo-data stage first)"
    local resume=()
    [ -d "$RUN_DIR/train_state" ] && resume=(--resume)
    log "train: $DATASET -> $RUN_DIR"
    # shellcheck disable=SC2086  # TRAIN_ARGS holds extra flags, split on purpose
    "$PYTHON" -m training.train --batch_size "${BATCH_SIZE:-128}" --prefetch_size 5 \
        --images_path "$IMAGES_PATH" --texts_path "$TEXTS_PATH" \
        --train_imgs_file_path "$TRAIN_SPLIT" --val_imgs_file_path "$VAL_SPLIT" \
        --save_model_path "$RUN_DIR" "${MODEL_ARGS[@]}" "${resume[@]}" $TRAIN_ARGS
    "$PYTHON" -m training.inference --images_path "$IMAGES_PATH" --texts_path "$TEXTS_PATH" \
        --test_imgs_file_path "$TEST_SPLIT" --checkpoint_path "$RUN_DIR" \
        --metrics_out "$RUN_DIR/test_metrics.json"
}

stage_index() {
    if [ "$FORCE" != 1 ] && index_ready; then
        log "index: $INDEX_DIR matches the model, skipped"
        return
    fi
    model_ready || die "index: no model in $RUN_DIR (run the train stage first)"
    log "index: test split of $DATASET -> $INDEX_DIR"
    "$PYTHON" -m index.build --model_dir "$RUN_DIR" --images_path "$IMAGES_PATH" \
        --texts_path "$TEXTS_PATH" --imgs_file_path "$TEST_SPLIT" --index_dir "$INDEX_DIR"
}

stage_serve() {
    index_ready || die "serve: no index of the model in $RUN_DIR at $INDEX_DIR"
    log "serve: http://$HOST:$PORT/  (try a query such as 'a large red circle left of a small blue square')"
    exec "$PYTHON" -m service --host "$HOST" --port "$PORT" --workers "$WORKERS" \
        --model_dir "$RUN_DIR" --index_dir "$INDEX_DIR"
}

case "${1:-all}" in
    demo-data) stage_demo_data ;;
    train) stage_train ;;
    index) stage_index ;;
    serve) stage_serve ;;
    all)
        stage_demo_data
        stage_train
        stage_index
        stage_serve
        ;;
    *) die "usage: entrypoint.sh demo-data|train|index|serve|all" ;;
esac
