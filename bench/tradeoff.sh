#!/usr/bin/env bash
# The trade-off benchmark of the embedded default model (or --model PATH) against the frontier:
# FID (N generated garments vs the first N Fashion-MNIST test images) against compute per image
# (MACs over all steps, % of DDIM 25 at full depth) for full depth at several step counts of each
# solver and for exit/reuse policies. Rows are appended to bench/tradeoff_results.jsonl as they
# finish; points already there are skipped, so the benchmark can be run in pieces and resumed.
# Prints the markdown table (every row at this N) and draws docs/tradeoff.png.
# Needs the FID weights (scripts/fetch_fid_weights.sh) and Debian's dataset-fashion-mnist.
#
#   bench/tradeoff.sh --num 1000 --point 'dpmpp-2m:10@per-sample:0.97'   # one point
#   bench/tradeoff.sh --num 1000                                          # table + plot only
#   # BENCHMARKS.md's table and docs/tradeoff.png:
#   bench/tradeoff.sh --num 1000 --fid-max 120 \
#       --frontier ddim:5,7,10,13,17,25,35,50 --frontier dpmpp-2m:5,7,10,13,17,25 \
#       --frontier dpmpp-3m:5,7,10,15 --frontier unipc:5,7,10,15
set -euo pipefail
cd "$(dirname "$0")/.."
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-2}
cargo run --release -q -p deediff-examples --bin tradeoff -- "$@"
