#!/usr/bin/env bash
# deediff vs PyTorch on this machine, every table BENCHMARKS.md records: U-ViT forward (three
# models, batch 1 and 16, with each side's matmul GFLOP/s at the models' shapes) and FID Inception
# features vs pytorch-fid. Run on an idle machine: each script refuses when the 1-minute load
# average exceeds 0.5. Extra arguments (e.g. --force for a look on a busy machine, never recorded)
# go to both scripts.
#
#   bench/vs_pytorch.sh [--threads N]        PYTHON=/path/to/python (default: python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# Build first, so compiling does not raise the load average the scripts check.
cargo bench -p deediff-unet --bench uvit_forward --bench matmul_shapes --no-run
cargo bench -p deediff-eval --bench fid --no-run
# Waits (at most 10 minutes) for the 1-minute load average to fall to 0.45, e.g. after the build
# or the previous benchmark; the scripts themselves refuse above 0.5.
settle() {
  for _ in $(seq 60); do
    awk '{ exit !($1 <= 0.45) }' /proc/loadavg && return 0
    sleep 10
  done
}
echo "## U-ViT forward"
settle
"$PY" bench/uvit_forward.py "$@"
echo
echo "## FID Inception features"
settle
"$PY" bench/fid.py "$@"
