#!/usr/bin/env bash
# Every pipeline × {LoRA, full} on the tiny preset and the bundled corpus for STEPS (default 60) steps;
# prints first/last loss and CE, validation, wall time, and writes each run's plots.svg.
# Run: scripts/build-plugins.sh && cargo build --release && bench/tiny_runs.sh [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-60}
out=runs/tiny-matrix
mkdir -p "$out"
printf '%-11s %-5s %10s %10s %10s %10s %9s %8s\n' pipeline mode loss0 lossN ce0 ceN val_ce seconds
for p in baseline rho1 verifiable critic; do
  for lora in true false; do
    mode=$([ "$lora" = true ] && echo lora || echo full)
    lr=$([ "$lora" = true ] && echo 0.01 || echo 0.003)
    dir="$out/$p-$mode"; rm -rf "$dir"
    start=$(date +%s.%N)
    target/release/wmtp run --pipeline "plugins/$p.wasm" --set checkpoint.dir="$dir" --set training.steps="$steps" \
      --set training.use_lora=$lora --set training.lr=$lr --set runtime.progress=false 2>/dev/null
    secs=$(echo "$(date +%s.%N) - $start" | bc)
    target/release/wmtp plot "$dir" >/dev/null
    python3 - "$dir/metrics.jsonl" "$p" "$mode" "$secs" <<'PY'
import json, sys
all_rows = [json.loads(l) for l in open(sys.argv[1])]
rows = [r for r in all_rows if "loss" in r]
q = max(1, len(rows) // 10)
m = lambda k, rs: sum(r[k] for r in rs) / len(rs)
val = [r["val_ce"] for r in all_rows if "val_ce" in r]
print(f"{sys.argv[2]:<11} {sys.argv[3]:<5} {m('loss', rows[:q]):10.4f} {m('loss', rows[-q:]):10.4f} {m('ce', rows[:q]):10.4f} {m('ce', rows[-q:]):10.4f} {val[-1] if val else float('nan'):9.4f} {float(sys.argv[4]):8.1f}")
PY
  done
done
