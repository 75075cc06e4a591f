#!/usr/bin/env bash
# The default job on a fresh machine: builds wmtp (release) and the Wasm plugins, then trains the embedded
# default (configs/default.toml: the tiny preset on the bundled corpus) with a pipeline plugin.
# Usage: scripts/run.sh [baseline|critic|verifiable|rho1]   (default baseline)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release
scripts/build-plugins.sh
target/release/wmtp run --pipeline "plugins/${1:-baseline}.wasm"
