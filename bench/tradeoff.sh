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
#   # a frontier, several step counts per solver at full depth:
#   bench/tradeoff.sh --num 1000 --frontier dpmpp-3m:6,7,8,9,10 --frontier unipc:6,7,10
# BENCHMARKS.md's table and docs/tradeoff.png: each row's command is in the table's last column
# (bench/l2c/ holds the schedules of its l2c= rows); `bench/tradeoff.sh --num 1000` redraws both.
set -euo pipefail
cd "$(dirname "$0")/.."
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-2}
cargo run --release -q -p deediff-examples --bin tradeoff -- "$@"
