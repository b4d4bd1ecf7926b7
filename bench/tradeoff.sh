#!/usr/bin/env bash
# Speed/quality trade-off of early exits on the embedded default model (or --model PATH):
# FID against the Fashion-MNIST test set and wall-clock for full depth, DeeDiff thresholds and
# static truncation at matched depth, for DDIM and DPM-Solver++ at two step counts each.
# Needs the FID weights (scripts/fetch_fid_weights.sh) and Debian's dataset-fashion-mnist.
#
#   bench/tradeoff.sh --num 500 > bench/tradeoff.md
set -euo pipefail
cd "$(dirname "$0")/.."
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-2}
cargo run --release -q -p deediff-examples --bin tradeoff -- "$@"
