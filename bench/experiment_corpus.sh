#!/usr/bin/env bash
# Does weighting help on a real code corpus? (issue 24 item 5, the arms that train on the corpus.)
# SmolLM2-135M-Instruct widened to 4 heads (copied from head 0), LoRA r 8 α 16 on wq wk wv wo, trained on the
# Python corpus of scripts/make-code-corpus.py, for every ARM × RECIPE × SEED with the same data, steps
# and batch:
#   ARMS     baseline (uniform token weights, configs/baseline_lora.toml) and rho1 (Rho-1 selection,
#            configs/rho1_lora.toml; its reference is a short baseline stage on the same data)
#   RECIPES  uniform (every head's loss reaches the trunk) and ntp-heads (bench/recipes: the trunk learns
#            from head 0's loss alone, heads 1–3 as whole blocks from theirs)
# Data: every K-th row of CORPUS/train.jsonl so that the subset holds about SUBSET_TOKENS tokens (one
# subset for every run; each seed shuffles it its own way), validation during the run on the first
# VAL_ROWS rows of CORPUS/val.jsonl. Each final checkpoint is scored the same way:
#   - held-out CE per head on all of CORPUS/val.jsonl (`wmtp eval --pipeline plugins/baseline.wasm --data`);
#   - held-out CE per head on HumanEval's 164 canonical solutions (prompt + solution, never trained on);
#   - greedy pass@1 on all 164 HumanEval problems (ChatML prompt, f32 via --model CKPT), and with
#     PASS10=1 pass@10 of 10 samples at T 0.8, top-p 0.95 (drawn on the device; PASS10_BATCH rows at once, 410:
#     the 1,640 samples in 4 batches).
# The untrained model is scored the same way (UNTRAINED=1, the default: a checkpoint of one step at lr 1e-30 —
# the LoRA B matrices move by ~1e-30 from zero — so the same `wmtp eval` commands read it). Then bench/experiment_corpus_report.py.
# Run (a CUDA machine; build first: cargo build --release --features cuda, scripts/build-plugins.sh,
# scripts/fixtures.sh, python3 scripts/make-humaneval-data.py, scripts/make-code-corpus.py):
#   bench/experiment_corpus.sh                                   # 3 seeds, 2 arms × 2 recipes
#   ARMS=baseline RECIPES=uniform SEEDS=1 STEPS=5 DEVICE=cpu DTYPE=f32 SUBSET_TOKENS=20000 VAL_ROWS=20 \
#     UNTRAINED=0 bench/experiment_corpus.sh                     # smoke
set -euo pipefail
cd "$(dirname "$0")/.."
WMTP=${WMTP:-target/release/wmtp}
SEEDS=${SEEDS:-1 2 3}
ARMS=${ARMS:-baseline rho1}
RECIPES=${RECIPES:-uniform ntp-heads}
STEPS=${STEPS:-180}  # 180 × 16 × 2 rows ≈ 1.05 M tokens
BATCH=${BATCH:-16}
ACCUM=${ACCUM:-2}
DEVICE=${DEVICE:-cuda}
DTYPE=${DTYPE:-bf16}
CORPUS=${CORPUS:-.cache/corpus}
SUBSET_TOKENS=${SUBSET_TOKENS:-4390000}  # every 10th row of the 43.9 M-token corpus (the 2026-12-06 runs)
VAL_ROWS=${VAL_ROWS:-1000}
OUT=${OUT:-runs/experiment-corpus}
PROBLEMS=${PROBLEMS:-.cache/data/humaneval_problems.jsonl}
HE_ROWS=${HE_ROWS:-.cache/data/humaneval.jsonl}
GGUF=${GGUF:-.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf}
MAX_NEW=${MAX_NEW:-384}
# TEMPLATE: the instruction template of training rows and evaluation prompts — chatml, as in the runs
# measured before `auto` took the model's own chat template (SmolLM2's adds a default system turn)
TEMPLATE=${TEMPLATE:-chatml}
limit=()
[ -n "${LIMIT:-}" ] && limit=(--limit "$LIMIT") # LIMIT: score only the first N problems (smoke tests)
mkdir -p "$OUT"
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

# the shared data: the training subset, the in-run validation rows, HumanEval's solutions as {text}
python3 - "$CORPUS" "$SUBSET_TOKENS" "$VAL_ROWS" "$HE_ROWS" "$OUT" <<'PY'
import json, math, os, sys
corpus, budget, val_rows, he_rows, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
stats = json.load(open(os.path.join(corpus, "stats.json")))
rows = open(os.path.join(corpus, "train.jsonl")).readlines()
k = max(1, math.floor(stats["tokens"] / budget))
with open(os.path.join(out, "train.jsonl"), "w") as f:
    f.writelines(rows[::k])
with open(os.path.join(out, "val_in_run.jsonl"), "w") as f:
    f.writelines(open(os.path.join(corpus, "val.jsonl")).readlines()[:val_rows])
seen = set()
with open(os.path.join(out, "humaneval_solutions.jsonl"), "w") as f:
    for line in open(he_rows):
        r = json.loads(line)
        if r.get("is_correct") and r["problem_id"] not in seen:  # the first correct row: the canonical one
            seen.add(r["problem_id"])
            f.write(json.dumps({"text": r["input"] + r["output"]}) + "\n")
print(f"training subset: every {k}th row, {len(rows[::k])} rows; {len(seen)} HumanEval solutions", file=sys.stderr)
PY

common=(--set "data.template=\"$TEMPLATE\"" --set "model.device=\"$DEVICE\"" --set "model.dtype=\"$DTYPE\"" --set "training.steps=$STEPS"
  --set "training.batch_size=$BATCH" --set "training.grad_accum=$ACCUM"
  --set "data.train=\"$OUT/train.jsonl\"" --set "data.validation=\"$OUT/val_in_run.jsonl\""
  --set runtime.eval_every=${EVAL_EVERY:-50} --set checkpoint.every=0 --set runtime.progress=false
  --set runtime.activation_checkpointing=none)

source bench/recipes/sets.sh # recipe_sets NAME: a recipe's overrides, one per line

# score NAME DIR MODEL-ARGS...: held-out CE (corpus, HumanEval solutions) and pass@1 of a model
score() {
  local dir=$1 ck=$2
  if [ -n "$ck" ]; then
    "$WMTP" eval --checkpoint "$ck" --pipeline plugins/baseline.wasm --data "$CORPUS/val.jsonl" \
      --out "$dir/corpus_val_ce.json" >"$dir/eval.log" 2>&1 &&
      "$WMTP" eval --checkpoint "$ck" --pipeline plugins/baseline.wasm --data "$OUT/humaneval_solutions.jsonl" \
        --out "$dir/humaneval_ce.json" >>"$dir/eval.log" 2>&1 || { log "eval failed: $dir"; tail -5 "$dir/eval.log" >&2; return 1; }
  fi
  local model=${ck:-$GGUF}
  "$WMTP" eval --humaneval "$PROBLEMS" --model "$model" --device "$DEVICE" --template "$TEMPLATE" "${limit[@]}" \
    --max-new-tokens "$MAX_NEW" --batch 64 --out "$dir/pass1.jsonl" >"$dir/pass1.txt" 2>"$dir/pass1.log" ||
    { log "pass@1 failed: $dir"; tail -5 "$dir/pass1.log" >&2; return 1; }
  if [ "${PASS10:-0}" = 1 ]; then
    "$WMTP" eval --humaneval "$PROBLEMS" --model "$model" --device "$DEVICE" --template "$TEMPLATE" "${limit[@]}" \
      --max-new-tokens "$MAX_NEW" --batch "${PASS10_BATCH:-410}" --samples 10 --temperature 0.8 --top-p 0.95 \
      --out "$dir/pass10.jsonl" >"$dir/pass10.txt" 2>"$dir/pass10.log" || { log "pass@10 failed: $dir"; return 1; }
  fi
}

run_one() {
  local arm=$1 recipe=$2 seed=$3 dir="$OUT/$1/$2/seed-$3"
  rm -rf "$dir"
  mkdir -p "$dir"
  local sets=() line
  while IFS= read -r line; do [ -n "$line" ] && sets+=(--set "$line"); done < <(recipe_sets "$recipe")
  local t0=$SECONDS
  "$WMTP" run --pipeline "plugins/$arm.wasm" --config "configs/${arm}_lora.toml" "${common[@]}" "${sets[@]}" \
    --set "training.seed=$seed" --set "checkpoint.dir=\"$dir\"" >"$dir/run.log" 2>&1 ||
    { log "$arm $recipe seed $seed: run failed"; tail -5 "$dir/run.log" >&2; return 1; }
  echo "$((SECONDS - t0))" >"$dir/train_seconds"
  score "$dir" "$(ls -d "$dir"/checkpoints/step-* | sort | tail -1)" || return 1
  log "$arm $recipe seed $seed: done in $((SECONDS - t0)) s, $(head -1 "$dir/pass1.txt")"
}

log "corpus experiment: arms [$ARMS] × recipes [$RECIPES] × seeds [$SEEDS], $STEPS steps of $BATCH × $ACCUM, out $OUT"
fail=0
if [ "${UNTRAINED:-1}" = 1 ]; then
  mkdir -p "$OUT/untrained"
  "$WMTP" run --pipeline plugins/baseline.wasm --config configs/baseline_lora.toml "${common[@]}" \
    --set training.steps=1 --set training.lr=1e-30 --set "checkpoint.dir=\"$OUT/untrained\"" >"$OUT/untrained/run.log" 2>&1 ||
    { log "untrained: run failed"; fail=1; }
  score "$OUT/untrained" "$(ls -d "$OUT"/untrained/checkpoints/step-* | sort | tail -1)" || fail=1
  log "untrained: $(head -1 "$OUT/untrained/pass1.txt" 2>/dev/null)"
fi
for seed in $SEEDS; do
  for arm in $ARMS; do
    for recipe in $RECIPES; do run_one "$arm" "$recipe" "$seed" || fail=1; done
  done
done
python3 bench/experiment_corpus_report.py "$OUT" || fail=1
exit $fail
