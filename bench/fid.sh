#!/usr/bin/env bash
# FID benchmark: deediff-eval vs pytorch-fid (2 threads each) in one run; see bench/fid.py.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 bench/fid.py "$@"
