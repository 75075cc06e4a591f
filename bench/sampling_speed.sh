#!/usr/bin/env bash
# Sampled generation, two wmtp binaries side by side on one machine (issue 26 item 7): BEFORE (e.g. a build
# of the commit before device sampling, which copied the [B, V] logits to the host every token and drew
# there) and AFTER (the draw on the device: B uniforms in, B ids out). The same model, B copies of one chat
# prompt (each row its own seed), T 0.8, top-p 0.95, MAX_NEW tokens: the batch runs until its longest row
# ends, which with B = 410 is MAX_NEW steps on both sides. Each binary runs once to warm up, then REPS
# timed runs; prints `wmtp generate`'s "N tokens in S s" of each and the ratio of the best times.
#   BEFORE=/tmp/wmtp-old AFTER=target/release/wmtp bench/sampling_speed.sh
# Env: MODEL (GGUF), B, MAX_NEW, DEVICE, DTYPE, REPS.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf}
B=${B:-410}
MAX_NEW=${MAX_NEW:-256}
REPS=${REPS:-2}
prompts=()
for _ in $(seq "$B"); do prompts+=(--prompt "Write a Python function that reads a CSV file and returns the sum of its second column."); done
run() {
  "$1" generate --model "$MODEL" --device "${DEVICE:-cuda}" --dtype "${DTYPE:-f32}" --template chatml "${prompts[@]}" \
    --batch "$B" --max-new-tokens "$MAX_NEW" --temperature 0.8 --top-p 0.95 --seed 1 2>&1 >/dev/null | grep 'tokens in'
}
declare -A best
for side in BEFORE AFTER; do
  bin=${!side}
  run "$bin" >/dev/null
  for _ in $(seq "$REPS"); do
    line=$(run "$bin")
    t=$(echo "$line" | sed -E 's/.* tokens in ([0-9.]+) s.*/\1/')
    echo "$side: $line"
    if [ -z "${best[$side]:-}" ] || python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) < float(sys.argv[2]) else 1)" "$t" "${best[$side]}"; then
      best[$side]=$t
    fi
  done
done
python3 -c "import sys; b, a = float(sys.argv[1]), float(sys.argv[2]); print(f'best of each: before {b:.2f} s, after {a:.2f} s: {b / a:.2f}x faster')" "${best[BEFORE]}" "${best[AFTER]}"
