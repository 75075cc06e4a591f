#!/usr/bin/env bash
# The interop round trip with the real Hugging Face libraries (tests/interop/peft_roundtrip.py): wmtp →
# PEFT adapter and HF merge loaded by peft/transformers, and a PEFT adapter → wmtp (lora.init_from), head-0
# CE and logits compared to 1e-4 in f32; and tests/interop/merged_model.py: `wmtp merge --format hf` of a
# SmolLM2 checkpoint read by transformers (tokens, chat template, logits, greedy continuation against
# transformers on the GGUF). Not part of `scripts/test.sh`/CI: torch's wheels are gigabytes.
#
# Usage: scripts/interop-test.sh            (CPU only; takes ~1 minute after the first install)
# Installs torch (CPU wheels from download.pytorch.org when reachable, else PyPI's), transformers, peft,
# tokenizers into .cache/pyref (PYREF=DIR to use another virtual environment), builds wmtp and the
# baseline plugin, then runs the script.
set -euo pipefail
cd "$(dirname "$0")/.."
PYREF=${PYREF:-.cache/pyref}
if ! "$PYREF/bin/python" -c "import torch, transformers, peft, tokenizers" 2>/dev/null; then
  python3 -m venv "$PYREF"
  "$PYREF/bin/pip" install -q --index-url https://download.pytorch.org/whl/cpu torch 2>/dev/null ||
    "$PYREF/bin/pip" install -q torch
  "$PYREF/bin/pip" install -q transformers peft tokenizers safetensors
fi
cargo build -q -p wmtp-host --bin wmtp
[ -f plugins/baseline.wasm ] || scripts/build-plugins.sh
"$PYREF/bin/python" tests/interop/peft_roundtrip.py --wmtp target/debug/wmtp --plugin plugins/baseline.wasm
# a merged real model (SmolLM2 GGUF of scripts/fixtures.sh; transformers reads the GGUF through `gguf`)
"$PYREF/bin/pip" show -q gguf >/dev/null 2>&1 || "$PYREF/bin/pip" install -q gguf
[ -f .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf ] || scripts/fixtures.sh
"$PYREF/bin/python" tests/interop/merged_model.py --wmtp target/debug/wmtp --plugin plugins/baseline.wasm
