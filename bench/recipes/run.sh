#!/usr/bin/env bash
# Recipes that keep head 0 (issue 24 item 2): SmolLM2-135M-Instruct widened to 4 heads (copied from
# head 0), the baseline plugin on the HumanEval data of scripts/make-humaneval-data.py, the same steps,
# batch, LoRA (r 8, α 16 on wq wk wv wo) and seeds for every recipe; only what the recipe names changes:
#   uniform      uniform MTP loss, LoRA in every block (today's default; head 0 degrades)
#   ntp          plugin.head_weights = [1, 0, 0, 0]: next-token training only (the extra heads unused)
#   weighted     plugin.head_weights = [1, 0.1, 0.08, 0.064] (Medusa-2-style down-weighted extra heads)
#   heads-lora   training.trainable_prefixes = ["extra_heads."]: LoRA trained in heads 1–3 only
#   heads-full   heads 1–3 as whole blocks (use_lora = false, trainable = ["heads"], same prefixes), lr 1e-4
#   ntp-heads    LoRA in the trunk and head 0, heads 1–3 as whole blocks (trainable = ["lora", "heads"],
#                prefixes ["*lora_", "extra_heads."]), training.detach_extra_heads = true: the model learns
#                from head 0's loss alone (as ntp), the extra heads from theirs (as heads-full), one run
#   staged       stage 1 (50 steps) heads 1–3 as whole blocks + their LoRA, lr 1e-4; stage 2 (50 steps) joint:
#                trunk LoRA too, head_weights [1, 0.1, 0.08, 0.064], not detached (Medusa-2's head warm-up)
# Each run validates on the held-out problems (data.val_fraction, split by problem id) at steps
# 0/25/50/75/100: per-head plain CE on their correct solutions (val_ce_h{k} in metrics.jsonl; step 0 is
# the untrained model). SEEDS_PASS seeds of each recipe are also scored by greedy pass@1 on all 164
# problems (ChatML prompt); the untrained model is scored the same way. SPECULATIVE="heads-lora …": the
# named recipes' heads (first seed) drive self-speculative decoding against plain decoding. Then the report:
#   python3 bench/recipes/report.py OUT
# Run (a CUDA machine; build first: cargo build --release --features cuda, scripts/build-plugins.sh,
# scripts/fixtures.sh, python3 scripts/make-humaneval-data.py):
#   bench/recipes/run.sh                                        # 3 seeds, pass@1 for seed 1
#   RECIPES="uniform heads-lora" SEEDS="1" DEVICE=cpu DTYPE=f32 STEPS=10 bench/recipes/run.sh   # smoke
set -euo pipefail
cd "$(dirname "$0")/../.."
WMTP=${WMTP:-target/release/wmtp}
SEEDS=${SEEDS:-1 2 3}
SEEDS_PASS=${SEEDS_PASS:-1}
STEPS=${STEPS:-100}
DEVICE=${DEVICE:-cuda}
DTYPE=${DTYPE:-bf16}
OUT=${OUT:-runs/recipes}
PROBLEMS=${PROBLEMS:-.cache/data/humaneval_problems.jsonl}
GGUF=${GGUF:-.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf}
MAX_NEW=${MAX_NEW:-384}
# TEMPLATE: the instruction template of training rows and evaluation prompts — chatml, as in the runs
# measured before `auto` took the model's own chat template (SmolLM2's adds a default system turn)
TEMPLATE=${TEMPLATE:-chatml}
RECIPES=${RECIPES-uniform ntp weighted heads-lora heads-full}
limit=()
[ -n "${LIMIT:-}" ] && limit=(--limit "$LIMIT")
mkdir -p "$OUT"
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

common=(--set "data.template=\"$TEMPLATE\"" --set "model.device=\"$DEVICE\"" --set "model.dtype=\"$DTYPE\"" --set "training.steps=$STEPS"
  --set data.val_fraction=0.2 --set runtime.eval_every=${EVAL_EVERY:-25} --set checkpoint.every=0
  --set runtime.progress=false --set runtime.activation_checkpointing=none)

# recipe_sets NAME: the recipe's overrides, one per line
source bench/recipes/sets.sh

# pass_at_1 WHAT OUTFILE [model args]: greedy pass@1 on all problems
pass_at_1() {
  local out=$1
  shift
  "$WMTP" eval --humaneval "$PROBLEMS" "$@" --template "$TEMPLATE" "${limit[@]}" --max-new-tokens "$MAX_NEW" \
    --batch 64 --out "$out.jsonl" >"$out.txt" 2>"$out.log" || { log "pass@1 failed: $out"; tail -5 "$out.log" >&2; return 1; }
}

run_one() {
  local recipe=$1 seed=$2 dir="$OUT/$1/seed-$2"
  rm -rf "$dir"
  mkdir -p "$dir"
  local sets=() line
  while IFS= read -r line; do [ -n "$line" ] && sets+=(--set "$line"); done < <(recipe_sets "$recipe")
  local t0=$SECONDS
  "$WMTP" run --pipeline plugins/baseline.wasm --config configs/baseline_lora.toml "${common[@]}" "${sets[@]}" \
    --set "training.seed=$seed" --set "checkpoint.dir=\"$dir\"" >"$dir/run.log" 2>&1 ||
    { log "$recipe seed $seed: run failed"; tail -5 "$dir/run.log" >&2; return 1; }
  echo "$((SECONDS - t0))" >"$dir/train_seconds"
  local ck
  ck=$(ls -d "$dir"/checkpoints/step-* | sort | tail -1)
  if [[ " $SEEDS_PASS " == *" $seed "* ]]; then
    # --model CKPT scores it in f32 like the untrained model (--checkpoint would use its training dtype:
    # bf16 greedy decoding scored the untrained weights 0.0305 against 0.0610 in f32)
    pass_at_1 "$dir/humaneval_all" --model "$ck" --device "$DEVICE" || return 1
  fi
  log "$recipe seed $seed: done in $((SECONDS - t0)) s $(head -1 "$dir/humaneval_all.txt" 2>/dev/null || true)"
}

# speculative RECIPE: self-speculative decoding with the heads of the recipe's first seed against plain
# cached decoding (greedy, batch 1, 8 HumanEval prompts, SPEC_TOKENS new tokens): tokens/s and acceptance
speculative() {
  local recipe=$1 first ck dir
  first=$(echo "$SEEDS" | awk '{print $1}')
  ck=$(ls -d "$OUT/$recipe/seed-$first"/checkpoints/step-* 2>/dev/null | sort | tail -1)
  [ -n "$ck" ] || { log "speculative $recipe: no checkpoint"; return 1; }
  dir="$OUT/speculative"
  mkdir -p "$dir"
  local prompts=() args=() mode
  mapfile -d '' prompts < <(python3 -c '
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
sys.stdout.write("\0".join(r["prompt"] for r in rows[::20][:8]))' "$PROBLEMS")
  for p in "${prompts[@]}"; do args+=(--prompt "$p"); done
  for mode in plain speculative; do
    local flag=()
    [ "$mode" = speculative ] && flag=(--speculative)
    "$WMTP" generate --model "$ck" --device "$DEVICE" --dtype "$DTYPE" --template "$TEMPLATE" \
      --max-new-tokens "${SPEC_TOKENS:-256}" --batch 1 "${flag[@]}" "${args[@]}" >"$dir/$recipe-$mode.txt" 2>"$dir/$recipe-$mode.log" ||
      { log "speculative $recipe $mode failed"; tail -3 "$dir/$recipe-$mode.log" >&2; return 1; }
    log "speculative $recipe $mode: $(grep -E 'tokens/s|speculative:|accept' "$dir/$recipe-$mode.log" | tr '\n' ' ')"
  done
}

log "recipes: [$RECIPES] seeds [$SEEDS], $STEPS steps, $DEVICE $DTYPE, out $OUT"
fail=0
if [ "${SKIP_UNTRAINED:-0}" != 1 ]; then
  mkdir -p "$OUT/untrained"
  pass_at_1 "$OUT/untrained/humaneval_all" --model "$GGUF" --device "$DEVICE" || fail=1
  log "untrained: $(head -1 "$OUT/untrained/humaneval_all.txt")"
fi
for seed in $SEEDS; do
  for recipe in $RECIPES; do run_one "$recipe" "$seed" || fail=1; done
done
for recipe in ${SPECULATIVE:-}; do speculative "$recipe" || fail=1; done
python3 bench/recipes/report.py "$OUT" || fail=1
exit $fail
