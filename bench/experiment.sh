#!/usr/bin/env bash
# Does weighting help? SmolLM2-135M-Instruct widened to 4 heads, LoRA r=8, HumanEval data (docs/design.md §7), the
# same steps, batch and seeds for every arm:
#   baseline            uniform MTP cross-entropy                     (configs/baseline_lora.toml)
#   rho1                Rho-1 selection, k = 0.6                      (configs/rho1_lora.toml; its reference
#                       is a short baseline stage, reference.baseline_steps, trained first)
#   verifiable-frozen   weights from a critic trained first, frozen   (configs/critic_lora.toml, then
#                       configs/verifiable_lora.toml with critic.checkpoint, value_coef = 0)
#   verifiable-joint    the policy's own value head trained jointly   (configs/verifiable_lora.toml)
# Every run holds out the same problems (data.val_fraction, split by problem id). Each final checkpoint is
# scored on the held-out problems the same way: plain cross-entropy per head on their correct samples
# under the baseline plugin (`wmtp eval --pipeline plugins/baseline.wasm`), and greedy pass@1 of
# `wmtp eval --humaneval --held-out` (ChatML prompt). The untrained model is scored the same way (step 0 of
# the baseline runs; pass@1 on all 164 problems, pass@10 of 10 samples at T = 0.8). Self-speculative
# decoding (acceptance per head, tokens/s against plain decoding) with the heads of a baseline run and
# with copied, untrained heads. Then bench/experiment_report.py writes the table and the plot.
#
# Run (a CUDA machine; build first: cargo build --release --features cuda, scripts/build-plugins.sh,
# scripts/fixtures.sh, python3 scripts/make-humaneval-data.py):
#   bench/experiment.sh                       # 3 seeds, 100 steps, on cuda
#   SEEDS="1 2 3 4 5" STEPS=200 DEVICE=cuda:0 WMTP=target/release/wmtp OUT=runs/experiment bench/experiment.sh
# Runs go one after another (PARALLEL=1, the default): processes sharing one GPU time-slice it; with four
# at once each step took 3.4× as long as alone (2.2 vs 0.65 s, H200, measured when steps were host-bound), no gain. PARALLEL=N runs N seeds
# at a time. ARMS: the arms to run (default all four); TRAIN_ONLY=1 skips the untrained, speculative
# and report parts. RECIPE: what reaches the trunk (bench/recipes/sets.sh; default uniform): with
# RECIPE=ntp-heads every arm but the critic (whose value head is all the frozen arm uses) trains LoRA in the
# trunk and head 0 from head 0's loss alone and heads 1–3 as whole blocks from theirs; verifiable-joint
# keeps its value head trained (training.trainable gains value_head).
set -euo pipefail
cd "$(dirname "$0")/.."
WMTP=${WMTP:-target/release/wmtp}
SEEDS=${SEEDS:-1 2 3}
STEPS=${STEPS:-100}
DEVICE=${DEVICE:-cuda}
DTYPE=${DTYPE:-bf16}
VAL_FRACTION=${VAL_FRACTION:-0.2}
OUT=${OUT:-runs/experiment}
PROBLEMS=${PROBLEMS:-.cache/data/humaneval_problems.jsonl}
MAX_NEW=${MAX_NEW:-384}
UNTRAINED_SAMPLES=${UNTRAINED_SAMPLES:-10}
GGUF=${GGUF:-.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf}
# TEMPLATE: the instruction template of training rows and evaluation prompts — chatml, as in the runs
# measured before `auto` took the model's own chat template (SmolLM2's adds a default system turn)
TEMPLATE=${TEMPLATE:-chatml}
# EXTRA: more `--set` overrides for every run (e.g. "training.batch_size=2 data.max_length=256");
# LIMIT: score only the first N held-out problems (smoke tests)
read -r -a extra_sets <<<"${EXTRA:-}"
limit=()
[ -n "${LIMIT:-}" ] && limit=(--limit "$LIMIT")
mkdir -p "$OUT"
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

# activation checkpointing off: the small model fits, and recomputing costs about a third of a step
common=(--set "data.template=\"$TEMPLATE\"" --set "model.device=\"$DEVICE\"" --set "model.dtype=\"$DTYPE\"" --set "training.steps=$STEPS"
  --set "data.val_fraction=$VAL_FRACTION" --set runtime.eval_every=25 --set checkpoint.every=0
  --set runtime.progress=false --set runtime.activation_checkpointing=none)
for e in "${extra_sets[@]}"; do common+=(--set "$e"); done
RECIPE=${RECIPE:-uniform}
source bench/recipes/sets.sh
recipe=()
while IFS= read -r line; do [ -n "$line" ] && recipe+=(--set "$line"); done < <(recipe_sets "$RECIPE")
# the recipe's overrides for the joint arm: its own value head stays trained
joint_recipe=("${recipe[@]/%\"heads\"]/\"heads\", \"value_head\"]}")

# train ARM SEED PLUGIN CONFIG [--set ...]: one run into $OUT/ARM/seed-SEED, then its held-out scores
train() {
  local arm=$1 seed=$2 plugin=$3 config=$4
  shift 4
  local dir="$OUT/$arm/seed-$seed"
  rm -rf "$dir"
  mkdir -p "$dir"
  local t0=$SECONDS
  "$WMTP" run --pipeline "plugins/$plugin.wasm" --config "$config" "${common[@]}" \
    --set "training.seed=$seed" --set "checkpoint.dir=\"$dir\"" "$@" >"$dir/run.log" 2>&1 ||
    { log "$arm seed $seed: run failed"; tail -5 "$dir/run.log" >&2; return 1; }
  echo "$((SECONDS - t0))" >"$dir/train_seconds"
  local ck
  ck=$(ls -d "$dir"/checkpoints/step-* | sort | tail -1)
  echo "$ck" >"$dir/final_checkpoint"
  if [ "$arm" != critic ]; then
    "$WMTP" eval --checkpoint "$ck" --pipeline plugins/baseline.wasm --out "$dir/heldout_ce.json" \
      >"$dir/eval.log" 2>&1 || { log "$arm seed $seed: eval failed"; tail -5 "$dir/eval.log" >&2; return 1; }
    "$WMTP" eval --humaneval "$PROBLEMS" --checkpoint "$ck" --held-out --template "$TEMPLATE" "${limit[@]}" \
      --max-new-tokens "$MAX_NEW" --batch 64 --out "$dir/heldout_humaneval.jsonl" \
      >"$dir/humaneval.txt" 2>"$dir/humaneval.log" ||
      { log "$arm seed $seed: humaneval failed"; tail -5 "$dir/humaneval.log" >&2; return 1; }
  fi
  log "$arm seed $seed: done in $((SECONDS - t0)) s ($(cat "$dir/humaneval.txt" 2>/dev/null | head -1))"
}

ARMS=${ARMS:-baseline rho1 verifiable-joint verifiable-frozen}
one_seed() {
  local s=$1 arm
  for arm in $ARMS; do
    case $arm in
    baseline) train baseline "$s" baseline configs/baseline_lora.toml "${recipe[@]}" ;;
    rho1) train rho1 "$s" rho1 configs/rho1_lora.toml "${recipe[@]}" ;;
    verifiable-joint) train verifiable-joint "$s" verifiable configs/verifiable_lora.toml "${joint_recipe[@]}" ;;
    verifiable-frozen)
      train critic "$s" critic configs/critic_lora.toml
      train verifiable-frozen "$s" verifiable configs/verifiable_lora.toml \
        --set "critic.checkpoint=\"$(cat "$OUT/critic/seed-$s/final_checkpoint")\"" --set plugin.value_coef=0.0 \
        "${recipe[@]}" ;;
    *) log "unknown arm $arm"; return 1 ;;
    esac
  done
}

untrained() {
  local dir="$OUT/untrained"
  mkdir -p "$dir"
  "$WMTP" eval --humaneval "$PROBLEMS" --model "$GGUF" --device "$DEVICE" --template "$TEMPLATE" "${limit[@]}" \
    --max-new-tokens "$MAX_NEW" --batch 64 --out "$dir/humaneval_greedy.jsonl" >"$dir/humaneval_greedy.txt" 2>"$dir/greedy.log"
  "$WMTP" eval --humaneval "$PROBLEMS" --model "$GGUF" --device "$DEVICE" --template "$TEMPLATE" "${limit[@]}" \
    --max-new-tokens "$MAX_NEW" --batch 128 --samples "$UNTRAINED_SAMPLES" --temperature 0.8 --top-p 0.95 \
    --out "$dir/humaneval_sampled.jsonl" >"$dir/humaneval_sampled.txt" 2>"$dir/sampled.log"
  log "untrained: $(head -1 "$dir/humaneval_greedy.txt"); sampled: $(tr '\n' ' ' <"$dir/humaneval_sampled.txt")"
}

# speculative MODEL LABEL [load options]: 8 held-out prompts, plain cached decoding vs self-speculative
speculative() {
  local model=$1 label=$2
  shift 2
  local dir="$OUT/speculative"
  mkdir -p "$dir"
  local prompts=()
  mapfile -d '' prompts < <(python3 - "$PROBLEMS" "$VAL_FRACTION" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
sys.stdout.write("\0".join(r["prompt"] for r in rows[::20][:8]))
PY
)
  local args=()
  for p in "${prompts[@]}"; do args+=(--prompt "$p"); done
  for mode in plain speculative; do
    local flag=()
    [ "$mode" = speculative ] && flag=(--speculative)
    "$WMTP" generate --model "$model" "$@" --device "$DEVICE" --dtype "$DTYPE" --template "$TEMPLATE" \
      --max-new-tokens "${SPEC_TOKENS:-256}" --batch 1 "${flag[@]}" "${args[@]}" >"$dir/$label-$mode.txt" 2>"$dir/$label-$mode.log"
    log "speculative $label $mode: $(grep -E 'tokens/s|speculative:' "$dir/$label-$mode.log" | tr '\n' ' ')"
  done
}

log "experiment: seeds [$SEEDS], $STEPS steps, $DEVICE $DTYPE, out $OUT"
fail=0
pids=()
for s in $SEEDS; do
  one_seed "$s" &
  pids+=($!)
  if [ "${#pids[@]}" -ge "${PARALLEL:-1}" ]; then
    for p in "${pids[@]}"; do wait "$p" || fail=1; done
    pids=()
  fi
done
for p in "${pids[@]}"; do wait "$p" || fail=1; done
[ "${TRAIN_ONLY:-0}" = 1 ] && exit $fail
first=$(echo "$SEEDS" | awk '{print $1}')
speculative "$(cat "$OUT/baseline/seed-$first/final_checkpoint")" trained-heads || fail=1
speculative "$GGUF" copied-heads --n-future-tokens 4 || fail=1
untrained || fail=1
python3 bench/experiment_report.py "$OUT" || fail=1
exit $fail
