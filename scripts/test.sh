#!/usr/bin/env bash
# The project's test command (README, and .ci/run): every crate's unit, parity and doc tests.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace
