#!/usr/bin/env bash
# Speed/quality trade-off of early exits on the embedded default model (or --model PATH):
# FID against the Fashion-MNIST test set and wall-clock for full depth, DeeDiff thresholds and
# static truncation at matched depth, for DDIM and DPM-Solver++ at two step counts each.
# Needs the FID weights (scripts/fetch_fid_weights.sh) and Debian's dataset-fashion-mnist.
#
# --band-run adds runs at full depth except in timestep bands (where shallow passes are cheap).
#
#   bench/tradeoff.sh --num 500 > bench/tradeoff.md
#   # BENCHMARKS.md's table and docs/tradeoff.png:
#   bench/tradeoff.sh --num 500 --thresholds 0.95,0.97,0.93,0.9,0.87 \
#       --band-run 640-1000:static:4 --band-run 640-1000:static:2 --band-run 640-1000:static:1 \
#       --band-run 520-1000:static:2 --band-run 400-600:static:4 \
#       --band-run 0-360:static:7 --band-run 0-360:static:5
set -euo pipefail
cd "$(dirname "$0")/.."
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-2}
cargo run --release -q -p deediff-examples --bin tradeoff -- "$@"
