#!/usr/bin/env bash
# Start-up of a `1b_mtp` (MODEL=…: another preset) bf16 LoRA run (FULL=1: full fine-tuning) on this
# machine's CPU: one rank (ONE=0: skipped; 1b full fine-tuning does not fit 24 GiB on one rank), then
# `wmtp launch` on two ranks; each run is stopped once its first step's metrics are written. Prints
# start-up = time.first_step_done_s − time.step_s of each. Compare two builds by running it with each:
#   B=target/release/wmtp bench/startup_cpu.sh
set -u
cd "$(dirname "$0")/.."
B=${B:-target/release/wmtp}
common=(--pipeline plugins/baseline.wasm --set "model.path=\"${MODEL:-1b_mtp}\"" --set 'model.dtype="bf16"' --set training.use_lora=$([ "${FULL:-0}" = 1 ] && echo false || echo true) --set training.batch_size=1 --set data.max_length=512 --set training.steps=2 --set runtime.eval_every=0 --set runtime.progress=false)
startup() { python3 -c "
import json,sys
r=[json.loads(l) for l in open(sys.argv[1]) if '\"step\"' in l][0]
print(f\"{sys.argv[2]}: first_step_done {r['time.first_step_done_s']:.1f} s, step {r['time.step_s']:.1f} s, start-up {r['time.first_step_done_s']-r['time.step_s']:.1f} s\")" $1/metrics.jsonl "$2"; }
# waits for run dir $1's first step, or for process $2 to end (then says so and stops)
wait_step() { until grep -qs '"step"' $1/metrics.jsonl; do kill -0 $2 2>/dev/null || { echo "$1: the run ended before its first step (out of memory?)"; exit 1; }; sleep 1; done; }
d=$(mktemp -d)
if [ "${ONE:-1}" = 1 ]; then
  setsid $B run "${common[@]}" --set "checkpoint.dir=\"$d/one\"" > $d/one.log 2>&1 & p=$!
  wait_step $d/one $p; kill -- -$p 2>/dev/null; sleep 2; startup $d/one "$B 1 rank"
fi
setsid $B launch --nproc-per-node 2 -- run "${common[@]}" --set "checkpoint.dir=\"$d/two\"" > $d/two.log 2>&1 & p=$!
wait_step $d/two $p; kill -- -$p 2>/dev/null; pkill -f "$B" ; sleep 2; startup $d/two "$B 2 ranks"
