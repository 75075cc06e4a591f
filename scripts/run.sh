#!/usr/bin/env bash
# The default job on a fresh machine: builds wmtp (release), fetches the real test model once, and runs it.
# Today: build and check the pipeline plugins, describe SmolLM2-135M with LoRA and continue a prompt
# greedily. The training engine replaces this with `wmtp run` on the embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release
scripts/build-plugins.sh
target/release/wmtp plugin check plugins/*.wasm
scripts/fixtures.sh
model=.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf
target/release/wmtp info --model "$model" --lora --n-future-tokens 4
target/release/wmtp generate --model "$model" --prompt "The three primary colours are" --max-new-tokens 24
