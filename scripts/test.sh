#!/usr/bin/env bash
# Runs roost's whole test suite: what README tells a newcomer and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --all-targets
cargo test --workspace --doc
