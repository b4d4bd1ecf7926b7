#!/usr/bin/env bash
# Wall-clock of one batch of 16 images (txt2img, DDIM 25 steps, the embedded model or --model)
# at full depth, static truncation and per-sample exits; policies interleaved, median of REPEATS.
#
#   bench/exit_speed.sh                     # RAYON_NUM_THREADS=2, REPEATS=5
#   bench/exit_speed.sh --model m.safetensors
#   POLICIES="full full+640-1000:static:2" bench/exit_speed.sh   # POLICY+BANDS: timestep bands
set -euo pipefail
cd "$(dirname "$0")/.."
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-2}
REPEATS=${REPEATS:-5}
POLICIES=${POLICIES:-"full per-sample:0.97 per-sample:0.95 per-sample:0.93 per-sample:0.9 static:6 static:5"}
cargo build --release -q -p deediff-examples --bin txt2img
tmp=$(mktemp -d)
for r in $(seq "$REPEATS"); do
    for p in $POLICIES; do
        case $p in
            per-sample:*) flags=(--policy per-sample --threshold "${p#per-sample:}") ;;
            *+*) flags=(--policy "${p%%+*}" --timestep-band "${p#*+}") ;;
            *) flags=(--policy "$p") ;;
        esac
        ./target/release/txt2img "$@" --prompt "an ankle boot" --num 16 --scheduler ddim --steps 25 \
            "${flags[@]}" --seed "$r" --out "$tmp/x.png" --report "$tmp/$p.$r.json" 2>/dev/null
    done
done
python3 - "$tmp" "$REPEATS" $POLICIES <<'PY'
import json, statistics, sys
tmp, repeats, policies = sys.argv[1], sys.argv[2], sys.argv[3:]
runs = {p: [json.load(open(f"{tmp}/{p}.{r}.json")) for r in range(1, int(repeats) + 1)]
        for p in policies}
full = statistics.median(r["seconds"] for r in runs["full"])
print("| policy | mean blocks | MACs % | median s / batch of 16 | speed-up vs full |")
print("|---|---|---|---|---|")
for p, rs in runs.items():
    s = statistics.median(r["seconds"] for r in rs)
    print(f"| {p} | {statistics.mean(r['mean_blocks'] for r in rs):.2f} | "
          f"{100 * statistics.mean(r['macs_fraction'] for r in rs):.1f} | {s:.3f} | {full / s:.2f}× |")
PY
rm -rf "$tmp"
