#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 600) with cargo-fuzz on nightly, one after another,
# starting from fuzz/seeds/ (the grown corpus stays in the ignored fuzz/corpus/), and prints a summary:
# executions, coverage, corpus size and crashes per target. Logs: fuzz/logs/<target>.log (ignored).
#   fuzz/run_all.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-600}"; shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(gguf safetensors pth jsonl config_toml sentencepiece adapter_config)
mkdir -p logs
cargo +nightly fuzz build -s none
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  cp -n seeds/"$t"/* "corpus/$t/" 2>/dev/null || true
  set +e
  cargo +nightly fuzz run -s none "$t" "corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=4096 \
    -max_len=65536 -timeout=20 -print_final_stats=1 > "logs/$t.log" 2>&1
  rc=$?
  set -e
  runs=$(grep -o 'Done [0-9]* runs in [0-9]* second' "logs/$t.log" | tail -1 || true)
  cov=$(grep -o 'cov: [0-9]* ft: [0-9]* corp: [0-9]*' "logs/$t.log" | tail -1 || true)
  crashes=$(find "artifacts/$t" -type f | wc -l)
  echo "$t: rc=$rc; ${runs:-no final stats}; ${cov:-}; crash/oom/timeout artifacts: $crashes"
done
