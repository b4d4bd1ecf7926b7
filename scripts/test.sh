#!/usr/bin/env bash
# The project's test command (README, and .ci/run): fetches what the tests need (the real FID
# Inception weights, never committed), then runs every crate's unit, parity and doc tests. A test
# whose prerequisite is missing fails rather than passing unseen.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch_fid_weights.sh
cargo test --workspace
