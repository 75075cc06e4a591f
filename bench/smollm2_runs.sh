#!/usr/bin/env bash
# Real-model runs on CPU: SmolLM2-135M-Instruct (GGUF, widened to 4 heads) + LoRA r=8 on the HumanEval
# data — a few steps each of baseline, rho1 and verifiable (step time, trainable parameters) — and the
# critic (value head only, pairwise loss) with held-out pairwise accuracy before and after training.
# STEPS = 0 runs only the critic part.
# Run: scripts/fixtures.sh && python3 scripts/make-humaneval-data.py && scripts/build-plugins.sh \
#      && cargo build --release && bench/smollm2_runs.sh [STEPS] [CRITIC_STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-4}
critic_steps=${2:-30}
out=runs/smollm2
mkdir -p "$out"
common=(--set runtime.progress=false --set training.batch_size=2 --set training.grad_accum=1)
for p in $([ "$steps" -gt 0 ] && echo baseline rho1 verifiable); do
  dir="$out/$p-lora"; rm -rf "$dir"
  target/release/wmtp run --pipeline "plugins/$p.wasm" --config "configs/${p}_lora.toml" "${common[@]}" \
    --set training.steps="$steps" --set runtime.eval_every=0 --set reference.baseline_steps=2 \
    --set checkpoint.dir="$dir" 2>&1 | grep -E "trainable|done|reference" || true
  python3 - "$dir/metrics.jsonl" "$p" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l]
secs = [r["tokens"] / r["tokens_per_s"] for r in rows]
print(f"  {sys.argv[2]}: {len(rows)} steps, median step {sorted(secs)[len(secs)//2]:.1f} s, loss {rows[0]['loss']:.3f} -> {rows[-1]['loss']:.3f}, ce_h0 {rows[0].get('ce_h0', float('nan')):.3f} -> {rows[-1].get('ce_h0', float('nan')):.3f}")
PY
done
dir="$out/critic"; rm -rf "$dir"
target/release/wmtp run --pipeline plugins/critic.wasm --config configs/critic.toml --set runtime.progress=false \
  --set training.steps="$critic_steps" --set training.batch_size=4 --set training.grad_accum=1 --set training.lr=1e-3 \
  --set runtime.eval_every="$critic_steps" --set checkpoint.dir="$dir" 2>&1 | grep -E "trainable|done" || true
python3 - "$dir/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
val = [r for r in rows if "val_plugin.pairwise_accuracy" in r]
print(f"  critic held-out pairwise accuracy: step {val[0]['step']}: {val[0]['val_plugin.pairwise_accuracy']:.3f} (margin {val[0]['val_margin']:.4f})"
      f" -> step {val[-1]['step']}: {val[-1]['val_plugin.pairwise_accuracy']:.3f} (margin {val[-1]['val_margin']:.4f})")
PY
