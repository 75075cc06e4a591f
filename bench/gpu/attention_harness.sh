#!/usr/bin/env bash
# The sm_90a attention harnesses side by side: builds the forward (bench/gpu/attention_sm90_bench.cu), its
# phase split (-DWS_PHASE_TIMER) and the backward (attention_sm90_bwd_bench.cu) of the working tree, and of a
# git revision beside them, into one folder; on the GPU machine runs every binary there and prints ours / SDPA
# for each (bench/gpu/ops_reference.py, one SDPA run) — a kernel change measured against its base in one call.
#
#   bench/gpu/attention_harness.sh build DIR [REV]   # here (nvcc 13.0: ../shared/tools/cuda-toolchain.sh)
#   bench/gpu/attention_harness.sh run DIR OUT       # there (carry DIR); lines into OUT/<binary>.jsonl
#
# Binaries: attn_fwd, attn_fwd_phase, attn_bwd (working tree) and attn_fwd-REV, attn_bwd-REV.
set -euo pipefail
cd "$(dirname "$0")/../.."
mode=${1:?build or run}
dir=${2:?folder for the binaries}
case $mode in
build)
  : "${CUDA_HOME:?source the toolchain env first (cuda-toolchain.sh prints it)}"
  mkdir -p "$dir"
  log=$(mktemp) src=""
  trap 'rm -rf "$log" $src' EXIT
  # nvcc with its stderr kept back (ptxas prints an info line per injected warpgroup.arrive) unless it fails
  nv() {
    nvcc -gencode arch=compute_90a,code=sm_90a -O3 -std=c++17 -L"$CUDA_HOME/lib" -L"$CUDA_HOME/lib/stubs" \
      -lcuda "$@" 2> "$log" || { cat "$log" >&2; echo "nvcc failed: $*" >&2; exit 1; }
  }
  build_tree() {  # source root, binary suffix
    nv -o "$dir/attn_fwd$2" "$1/bench/gpu/attention_sm90_bench.cu"
    nv -o "$dir/attn_bwd$2" "$1/bench/gpu/attention_sm90_bwd_bench.cu"
  }
  build_tree . ""
  nv -DWS_PHASE_TIMER -o "$dir/attn_fwd_phase" bench/gpu/attention_sm90_bench.cu
  if [ -n "${3:-}" ]; then
    src=$(mktemp -d)
    git archive "$3" bench/gpu host/kernels | tar -x -C "$src"
    build_tree "$src" "-$3"
  fi
  ls -l "$dir"
  ;;
run)
  out=${3:?folder for the output}
  mkdir -p "$out"
  ours=()
  for b in "$dir"/attn_*; do
    name=$(basename "$b")
    echo "== $name"
    "$b" > "$out/$name.jsonl"
    grep -h '"op"\|"phases"' "$out/$name.jsonl" | cut -c1-160
    [ "$name" = attn_fwd_phase ] || ours+=(--ours "$out/$name.jsonl")
  done
  ATTN_SWEEP=1 python3 bench/gpu/ops_reference.py "${ours[@]}" | tee "$out/sdpa.txt" | grep ours_over
  ;;
*)
  echo "usage: $0 build DIR [REV] | run DIR OUT" >&2
  exit 2
  ;;
esac
