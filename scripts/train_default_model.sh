#!/usr/bin/env bash
# Reproduces the embedded default model (MODEL.md) in three phases; re-running skips finished
# phases and resumes phase 3 from its checkpoint.
#
#   phase 1  L_simple training of the U-ViT backbone + text encoder        (PyTorch, GPU: 7 min)
#   phase 2  DeeDiff fine-tune of everything, certainty heads new          (PyTorch, GPU: 5 min)
#            L_simple + L_u + L_layer (λ = β = 1, official weighting)
#   phase 3  certainty heads re-fitted to the EMA weights that ship,        (candle, CPU: 10 min)
#            backbone frozen, L_u only
#
# Without a GPU phases 1–2 run on the CPU too, but take days on 2 cores.
#
#   scripts/train_default_model.sh       # outputs under runs/default/
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/default}
mkdir -p "$OUT/phase3"
bash scripts/fetch_data.sh
cargo build --release -p deediff-examples --bin train
python3 -c "import torch, numpy, safetensors" 2>/dev/null || pip install torch numpy safetensors

if [ ! -f "$OUT/deediff.safetensors" ]; then
    ./target/release/train --out-dir "$OUT" --write-captions "$OUT/captions.json"
    python3 scripts/train_torch.py check
    python3 scripts/train_torch.py pack --out "$OUT/data.npz"
    COMMON=(--data "$OUT/data.npz" --captions "$OUT/captions.json" --batch-size 512 --seed 0)
    [ -f "$OUT/backbone.safetensors" ] || python3 scripts/train_torch.py train "${COMMON[@]}" \
        --steps 16413 --lr 5e-4 --warmup 500 --ema-decay 0.9995 --out "$OUT/backbone.safetensors"
    python3 scripts/train_torch.py train "${COMMON[@]}" --deediff --init "$OUT/backbone.safetensors" \
        --steps 9000 --lr 2e-4 --warmup 300 --ema-decay 0.999 --lam 1 --beta 1 \
        --out "$OUT/deediff.safetensors"
fi

ARGS=(--out-dir "$OUT/phase3"
      --fashion-mnist /usr/share/datasets/fashion-mnist
      --mnist-json .cache/data/mnist/package/src/digits
      --freeze-backbone --lambda 1 --beta 0
      --steps 750 --batch-size 64 --lr 3e-4 --warmup 50 --cosine-min-lr 3e-5
      --weight-decay 0.03 --grad-clip 1 --ema-decay 0.995 --cond-drop 0.1
      --seed 0 --checkpoint-secs 120 --plain)
if [ -f "$OUT/phase3/checkpoint.safetensors" ]; then
    ARGS+=(--resume "$OUT/phase3/checkpoint.safetensors")
else
    ARGS+=(--init-from "$OUT/deediff.safetensors")
fi
# On a small shared CPU one compute thread beats candle's spinning thread pool; keeping freed
# memory in the allocator avoids re-zeroing pages on every step.
CANDLE_NUM_THREADS=${CANDLE_NUM_THREADS:-1} RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-1} \
MIMALLOC_PURGE_DELAY=-1 ./target/release/train "${ARGS[@]}"
# The default exit threshold stored in the file: the most compute-saving one whose FID stayed
# within 10 % of full depth in bench/tradeoff.sh (BENCHMARKS.md).
./target/release/train --out-dir "$OUT/phase3" --resume "$OUT/phase3/checkpoint.safetensors" \
    --export-only --exit-threshold 0.97
mkdir -p models
cp "$OUT/phase3/model.safetensors" models/uvit_t2i_fashion_digits.safetensors
