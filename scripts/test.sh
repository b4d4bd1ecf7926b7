#!/usr/bin/env bash
# The project's test command (README, and .ci/run): fetches what the tests need (the real FID
# Inception weights, never committed), then runs every crate's unit, parity and doc tests. A test
# whose prerequisite is missing fails rather than passing unseen.
set -euo pipefail
cd "$(dirname "$0")/.."
# Build every test first and import with the `fid` that build made: a separate `cargo run` build
# resolves features without the dev-dependencies and compiled candle a second time (~5 minutes
# of CI).
cargo test --workspace --no-run
DEEDIFF_FID_BIN=target/debug/fid ./scripts/fetch_fid_weights.sh
cargo test --workspace
