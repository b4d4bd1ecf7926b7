#!/usr/bin/env bash
# Wall-clock of batches of 16 images (txt2img, the embedded model or --model) for trade-off
# points written as in bench/tradeoff.sh, SCHEDULER:STEPS[@POLICY[+LO-HI:POLICY,…]]; the points
# are interleaved (every repeat runs each once, so all see the same machine) and each row is the
# median of REPEATS. Speed-ups are against the first point. Run it on an idle machine.
#
#   bench/exit_speed.sh                                     # RAYON_NUM_THREADS=2, REPEATS=15
#   POINTS="ddim:25 dpmpp-2m:10 dpmpp-2m:10@per-sample:0.97" bench/exit_speed.sh --model m.safetensors
set -euo pipefail
cd "$(dirname "$0")/.."
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-2}
REPEATS=${REPEATS:-15}
# Images per run, in batches of 16: one batch (16) counts the first batch's one-off costs (fresh
# pages, cold caches) in every run; 64 times the steady state of a longer job.
NUM=${NUM:-16}
POINTS=${POINTS:-"ddim:25 ddim:25@per-sample:0.97 ddim:25@per-sample:0.95 ddim:25@static:6 ddim:25@full+640-1000:static:2"}
cargo build --release -q -p deediff-examples --bin txt2img
# Only an idle machine counts: wait (at most 10 minutes) for the 1-minute load average to fall to
# 0.5 after the build, and refuse otherwise (FORCE=1 for a look, never to be recorded).
for _ in $(seq 60); do awk '{ exit !($1 <= 0.5) }' /proc/loadavg && break; sleep 10; done
load=$(cut -d' ' -f1 /proc/loadavg)
echo "$(date -u '+%F %R UTC') | CPU: $(lscpu | sed -n 's/^Model name: *//p' | head -1) | load before the run: $load | $NUM images per run in batches of 16"
if ! awk '{ exit !($1 <= 0.5) }' /proc/loadavg && [[ -z ${FORCE:-} ]]; then
    echo "exit_speed: load average $load > 0.5, refusing (FORCE=1 to run anyway, not to record)" >&2
    exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for r in $(seq "$REPEATS"); do
    for p in $POINTS; do
        head=${p%%@*} policy=full
        [[ $p == *@* ]] && policy=${p#*@}
        flags=(--scheduler "${head%%:*}" --steps "${head#*:}" --policy "${policy%%+*}")
        [[ $policy == *+* ]] && flags+=(--timestep-band "${policy#*+}")
        ./target/release/txt2img "$@" --prompt "an ankle boot" --num "$NUM" --batch 16 "${flags[@]}" \
            --seed "$r" --out "$tmp/x.png" --report "$tmp/$r.$(echo "$p" | tr '/:@+,' '_____').json" \
            >/dev/null 2>&1
    done
done
python3 - "$tmp" "$REPEATS" "$NUM" $POINTS <<'PY'
import json, statistics, sys
tmp, repeats, batches, points = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) / 16, sys.argv[4:]
key = lambda p: "".join("_" if c in "/:@+," else c for c in p)
runs = {p: [json.load(open(f"{tmp}/{r}.{key(p)}.json")) for r in range(1, repeats + 1)]
        for p in points}
def compute(r):  # MACs per image over all steps, in full-depth evaluations
    return r["macs_fraction"] * len(r["evals"])
base = statistics.median(r["seconds"] for r in runs[points[0]]) / batches
base_compute = compute(runs[points[0]][0])
# Of the ideal: the speed-up measured over the one the compute promises (time × compute fraction),
# the figure issue 11 asks to reach 95 % for per-sample exits. "Paired": the median over repeats of
# each repeat's own speed-up (its points ran within seconds of each other), which a host whose
# speed drifts between repeats moves less than the ratio of the two medians.
print(f"| point | mean blocks | compute vs {points[0]} | median s / batch of 16 | speed-up vs {points[0]} | of ideal | of ideal, paired |")
print("|---|---|---|---|---|---|---|")
for p, rs in runs.items():
    s = statistics.median(r["seconds"] for r in rs) / batches
    c = statistics.mean(compute(r) for r in rs) / base_compute
    paired = statistics.median(b["seconds"] / r["seconds"] for b, r in zip(runs[points[0]], rs))
    print(f"| {p} | {statistics.mean(r['mean_blocks'] for r in rs):.2f} | {100 * c:.1f} % | "
          f"{s:.3f} | {base / s:.2f}× | {100 * base / s * c:.0f} % | {100 * paired * c:.0f} % |")
PY
