#!/usr/bin/env bash
# `wmtp eval --humaneval` sampling, two wmtp binaries side by side on one machine: BEFORE (e.g. a build of
# 1452b8d, whose stop check decoded every row's whole text at every token) and AFTER (decodes the whole text
# only when the last tokens hold a backtick or newline). Each scores the same model on all 164 problems with
# SAMPLES samples at T 0.8, top-p 0.95 (the corpus experiment's pass@10 settings), in batches of BATCH rows;
# prints each side's "(generated in G s, run in R s)" and pass@k lines, and the ratio of generation times.
#   BEFORE=/tmp/wmtp-old AFTER=target/release/wmtp bench/humaneval_generation_speed.sh
# Env: MODEL (GGUF), PROBLEMS (scripts/make-humaneval-data.py's), SAMPLES, BATCH, MAX_NEW, DEVICE.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf}
PROBLEMS=${PROBLEMS:-.cache/data/humaneval_problems.jsonl}
declare -A gen
for side in BEFORE AFTER; do
  bin=${!side}
  log=$(mktemp)
  "$bin" eval --humaneval "$PROBLEMS" --model "$MODEL" --device "${DEVICE:-cuda}" --template chatml \
    --max-new-tokens "${MAX_NEW:-384}" --batch "${BATCH:-410}" --samples "${SAMPLES:-10}" --temperature 0.8 \
    --top-p 0.95 --out "$log.jsonl" >"$log.txt" 2>"$log"
  line=$(tr '\r' '\n' <"$log" | grep 'generated in' | tail -1)
  echo "$side: $line; $(tr '\n' ' ' <"$log.txt")"
  gen[$side]=$(echo "$line" | sed -E 's/.*generated in ([0-9.]+) s.*/\1/')
done
python3 -c "import sys; b, a = float(sys.argv[1]), float(sys.argv[2]); print(f'generation: before {b:.1f} s, after {a:.1f} s: {b / a:.2f}x faster')" "${gen[BEFORE]}" "${gen[AFTER]}"
