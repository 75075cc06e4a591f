#!/usr/bin/env bash
# Runs every test: makes the fixtures (.cache/, once), builds the plugins (Rust, and the Python example),
# then the whole workspace's unit and integration tests with a temporary artifact cache (WMTP_CACHE_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fixtures.sh
scripts/build-plugins.sh
examples/python-focal/build.sh   # the Python example (componentize-py from PyPI, once into .cache/)
# tests never touch the user's ~/.cache/wmtp: compiled plugins and reference stages go to a fresh folder
export WMTP_CACHE_DIR="${WMTP_TEST_CACHE_DIR:-$(mktemp -d -t wmtp-test-cache.XXXXXX)}"
trap 'rm -rf "$WMTP_CACHE_DIR"' EXIT
cargo test --workspace "$@"
