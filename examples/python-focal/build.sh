#!/usr/bin/env bash
# Builds the Python focal plugin into examples/python-focal.wasm: componentize-py (PyPI, pinned, installed
# once into .cache/componentize-py) bundles CPython and app.py into a component of sdk/wit/pipeline.wit.
# --stub-wasi replaces CPython's WASI imports (files, sockets, clocks) with trapping stubs, so the plugin
# needs nothing the sandbox refuses.
set -euo pipefail
cd "$(dirname "$0")"
root=../..
venv=$root/.cache/componentize-py
if [ ! -x "$venv/bin/componentize-py" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet 'componentize-py==0.25.1'
fi
out=$root/examples/python-focal.wasm
"$venv/bin/componentize-py" -d "$root/sdk/wit" -w pipeline componentize --stub-wasi app -o "$out" >/dev/null
rm -rf __pycache__
echo "python-focal: built examples/python-focal.wasm"
