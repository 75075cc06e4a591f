#!/usr/bin/env bash
# Issue 26 items 2 and 3 in one device call: the attention alone against SDPA, two builds side by side
# (BEFORE and AFTER gpu_ops binaries: `cargo bench --features cuda --bench gpu_ops --no-run` of each, e.g.
# main and a kernel change), each with its numerics check lines; then bench/gpu/run.py's rows in the three
# activation_checkpointing modes beside PyTorch eager with the wmtp binary WMTP.
#   BEFORE=/tmp/gpu_ops-main AFTER=/tmp/gpu_ops-new WMTP=target/release/wmtp bench/gpu/attention_and_modes.sh
# Env: ROWS (run.py rows; default the 1b LoRA and full-FT rows — the 7B rows are a second call), SIDES,
# OUT (results folder; default a temporary one). Prints the check lines (max relative error of o, dq, dk,
# dv against the plain f32 path: expect ≲ 1e-2 in bf16), the ours/SDPA ratios and run.py's table.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$(mktemp -d)}; mkdir -p "$OUT"
ROWS=${ROWS:-1b_mtp:8:lora 1b_mtp:8:full}
SIDES=${SIDES:-wmtp-blocks,wmtp-selective,wmtp-none,pytorch}
ours=()
for side in BEFORE AFTER; do
  bin=${!side:-}
  [ -n "$bin" ] || continue
  ATTN_SWEEP=1 timeout 300 "$bin" > "$OUT/sweep_$side.jsonl" 2> "$OUT/sweep_$side.err" || tail -3 "$OUT/sweep_$side.err"
  echo "== $side: $bin"
  grep check "$OUT/sweep_$side.jsonl"
  ours+=(--ours "$OUT/sweep_$side.jsonl")
done
# SDPA once, with a ratio line per build
[ ${#ours[@]} -gt 0 ] && ATTN_SWEEP=1 python3 bench/gpu/ops_reference.py "${ours[@]}" | grep ours_over_sdpa
if [ -n "${WMTP:-}" ]; then
  # shellcheck disable=SC2086
  python3 bench/gpu/run.py --wmtp "$WMTP" --plugin plugins/baseline.wasm --rows $ROWS --sides "$SIDES" \
    --out "$OUT/run" 2>&1 | tail -25
fi
echo "results in $OUT"
