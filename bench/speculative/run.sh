#!/usr/bin/env bash
# Self-speculative decoding that pays (issue 24 item 4): heads trained on the model's own answers, then
# self-speculative greedy decoding against plain greedy decoding, batch 1, on HumanEval prompts.
#   1. prompts: HumanEval-shaped instructions from the code corpus (bench/speculative/make_prompts.py:
#      a documented function's header + docstring; no HumanEval prompt among them);
#   2. self-distillation (Medusa-2): the frozen SmolLM2-135M-Instruct's greedy answers to them
#      (`wmtp distill`, ChatML, DTYPE, at most DISTILL_TOKENS tokens each);
#   3. the heads: the model widened to 4 heads (copied from head 0), heads 1–3 trained as whole blocks on
#      those answers with the trunk, head 0, the shared norm and output frozen (use_lora = false,
#      trainable = ["heads"], prefixes ["extra_heads."]), STEPS steps of BATCH rows, for each lr in LRS —
#      head 0's greedy tokens are the untrained model's, so the drafts are judged against what they learned;
#   4. decoding: SPEC_PROMPTS HumanEval prompts (every 10th problem; never trained on), SPEC_TOKENS new
#      tokens each, plain cached greedy vs --speculative with each run's heads and each draft tree of
#      TREES (chain: each head's top token; wide: Medusa-style tree of top-k drafts), interleaved REPS
#      times: tokens/s, each head's acceptance, and the speed ratio of each speculative run to the plain
#      run before it (the report gives the median and range); how many continuations the two decodings
#      share (CHECK_F32=1: also both in f32 with the first lr's heads, where they must be identical).
# Run (a CUDA machine; build first: cargo build --release --features cuda, scripts/build-plugins.sh,
# scripts/fixtures.sh, python3 scripts/make-humaneval-data.py, scripts/make-code-corpus.py):
#   bench/speculative/run.sh
#   DEVICE=cpu DTYPE=f32 PROMPTS_LIMIT=8 DISTILL_TOKENS=16 STEPS=2 BATCH=2 SPEC_PROMPTS=1 SPEC_TOKENS=8 \
#     REPS=1 bench/speculative/run.sh        # smoke
#   SKIP_TRAIN=1 ...                           # decode the heads already in OUT again
set -euo pipefail
cd "$(dirname "$0")/../.."
WMTP=${WMTP:-target/release/wmtp}
DEVICE=${DEVICE:-cuda}
DTYPE=${DTYPE:-bf16}
CORPUS=${CORPUS:-.cache/corpus}
OUT=${OUT:-runs/speculative}
PROBLEMS=${PROBLEMS:-.cache/data/humaneval_problems.jsonl}
GGUF=${GGUF:-.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf}
PROMPTS_LIMIT=${PROMPTS_LIMIT:-1536}
DISTILL_TOKENS=${DISTILL_TOKENS:-256}
STEPS=${STEPS:-600}
BATCH=${BATCH:-16}
LRS=${LRS:-2e-3}
SPEC_PROMPTS=${SPEC_PROMPTS:-16}
SPEC_TOKENS=${SPEC_TOKENS:-256}
REPS=${REPS:-3}
TREES=${TREES:-chain wide}
mkdir -p "$OUT"
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

[ -s "$OUT/prompts.jsonl" ] ||
  python3 bench/speculative/make_prompts.py "$CORPUS/train.jsonl" "$OUT/prompts.jsonl" --limit "$PROMPTS_LIMIT"
if [ ! -s "$OUT/distill.jsonl" ]; then
  t0=$SECONDS
  "$WMTP" distill --model "$GGUF" --device "$DEVICE" --dtype "$DTYPE" --data "$OUT/prompts.jsonl" \
    --out "$OUT/distill.jsonl" --template chatml --max-new-tokens "$DISTILL_TOKENS" --batch 128 \
    >"$OUT/distill.log" 2>&1 || { log "distill failed"; tail -5 "$OUT/distill.log" >&2; exit 1; }
  log "distill: $(tail -1 "$OUT/distill.log") in $((SECONDS - t0)) s"
fi

train() {
  local lr=$1 dir="$OUT/heads-lr$1"
  rm -rf "$dir"
  mkdir -p "$dir"
  local t0=$SECONDS
  "$WMTP" run --pipeline plugins/baseline.wasm --config configs/baseline_lora.toml \
    --set 'data.template="chatml"' --set "data.train=\"$OUT/distill.jsonl\"" --set data.val_fraction=0.05 \
    --set "model.device=\"$DEVICE\"" --set "model.dtype=\"$DTYPE\"" --set training.use_lora=false \
    --set 'training.trainable=["heads"]' --set 'training.trainable_prefixes=["extra_heads."]' \
    --set "training.lr=$lr" --set "training.steps=$STEPS" --set "training.batch_size=$BATCH" \
    --set training.grad_accum=1 --set runtime.eval_every=100 --set checkpoint.every=0 \
    --set runtime.progress=false --set runtime.activation_checkpointing=none \
    --set "checkpoint.dir=\"$dir\"" >"$dir/run.log" 2>&1 || { log "heads lr $lr: run failed"; tail -5 "$dir/run.log" >&2; return 1; }
  log "heads lr $lr: trained in $((SECONDS - t0)) s; $(grep -E 'val' "$dir/run.log" | tail -1)"
}

# decode LABEL MODEL [flags]: SPEC_PROMPTS HumanEval prompts, batch 1
decode() {
  local label=$1 model=$2
  shift 2
  local prompts=() args=()
  mapfile -d '' prompts < <(python3 -c '
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
n = int(sys.argv[2])
sys.stdout.write("\0".join("Complete the following Python function.\n\n" + r["prompt"] for r in rows[::10][:n]))' "$PROBLEMS" "$SPEC_PROMPTS")
  for p in "${prompts[@]}"; do args+=(--prompt "$p"); done
  "$WMTP" generate --model "$model" --device "$DEVICE" --dtype "${DECODE_DTYPE:-$DTYPE}" --template chatml \
    --max-new-tokens "$SPEC_TOKENS" --batch 1 "$@" "${args[@]}" >"$OUT/$label.txt" 2>"$OUT/$label.log" ||
    { log "decode $label failed"; tail -3 "$OUT/$label.log" >&2; return 1; }
  log "$label: $(grep -E 'tokens/s|speculative:|accept' "$OUT/$label.log" | tr '\n' ' ')"
}

# same LABEL_A LABEL_B: how many of the prompts' continuations are identical
same() {
  python3 - "$OUT/$1.txt" "$OUT/$2.txt" <<'PY'
import sys
a, b = (open(p).read().split("Complete the following Python function.")[1:] for p in sys.argv[1:3])
print(f"{sum(x == y for x, y in zip(a, b))} of {len(a)} continuations identical")
PY
}

fail=0
pids=()
for lr in $LRS; do
  [ "${SKIP_TRAIN:-0}" = 1 ] && break
  train "$lr" &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || fail=1; done
first=1
for lr in $LRS; do
  ck=$(ls -d "$OUT/heads-lr$lr"/checkpoints/step-* 2>/dev/null | sort | tail -1)
  [ -n "$ck" ] || continue
  # plain decoding of the same checkpoint (its head 0 is the untrained model's) and speculative with
  # each draft tree, interleaved REPS times: the host's speed drifts, and each ratio pairs a
  # speculative run with the plain run just before it
  for rep in $(seq 1 "$REPS"); do
    decode "plain-lr$lr-r$rep" "$ck" || fail=1
    for tree in $TREES; do
      decode "spec-$tree-lr$lr-r$rep" "$ck" --speculative --draft-tree "$tree" || fail=1
    done
  done
  # in bf16 a verification pass over several positions rounds differently from one-position steps, so
  # a near-tie can flip the greedy token and the continuations part there; in f32 (CHECK_F32=1, first
  # lr) they must agree
  for tree in $TREES; do
    log "lr $lr, $DTYPE, $tree: $(same "plain-lr$lr-r1" "spec-$tree-lr$lr-r1")"
  done
  if [ "${CHECK_F32:-0}" = 1 ] && [ $first = 1 ]; then
    DECODE_DTYPE=f32 decode "plain-f32-lr$lr" "$ck" || fail=1
    for tree in $TREES; do
      DECODE_DTYPE=f32 decode "spec-f32-$tree-lr$lr" "$ck" --speculative --draft-tree "$tree" || fail=1
      log "lr $lr, f32, $tree: $(same "plain-f32-lr$lr" "spec-f32-$tree-lr$lr")"
      cmp -s "$OUT/plain-f32-lr$lr.txt" "$OUT/spec-f32-$tree-lr$lr.txt" || fail=1
    done
  fi
  first=0
done
python3 bench/speculative/report.py "$OUT" || fail=1
exit $fail
