#!/usr/bin/env bash
# Runs every test: makes the fixtures (.cache/, once), then the whole workspace's unit and integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fixtures.sh
scripts/build-plugins.sh
cargo test --workspace "$@"
