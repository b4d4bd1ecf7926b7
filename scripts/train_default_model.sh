#!/usr/bin/env bash
# Trains the embedded default model (see MODEL.md) with one command; re-running it resumes from
# $OUT/checkpoint.safetensors. The finished EMA weights are copied to models/.
#
#   scripts/train_default_model.sh            # logs: runs/default/train.jsonl, progress on stderr
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/default}
bash scripts/fetch_data.sh

ARGS=(--out-dir "$OUT"
      --fashion-mnist /usr/share/datasets/fashion-mnist
      --mnist-json .cache/data/mnist/package/src/digits
      --steps 9000 --batch-size 32
      --lr 3e-4 --warmup 200 --cosine-min-lr 3e-5
      --weight-decay 0.03 --grad-clip 1 --ema-decay 0.999
      --lambda 1 --beta 0.5 --cond-drop 0.1
      --seed 0 --checkpoint-secs 240 --plain)
if [ -f "$OUT/checkpoint.safetensors" ]; then
    ARGS+=(--resume "$OUT/checkpoint.safetensors")
fi

# On a small shared CPU one compute thread beats candle's spinning thread pool; keeping freed
# memory in the allocator avoids re-zeroing pages on every step.
export CANDLE_NUM_THREADS=${CANDLE_NUM_THREADS:-1} RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-1}
export MIMALLOC_PURGE_DELAY=-1
cargo run --release -p deediff-examples --bin train -- "${ARGS[@]}"
mkdir -p models
cp "$OUT/model.safetensors" models/uvit_t2i_fashion_digits.safetensors
