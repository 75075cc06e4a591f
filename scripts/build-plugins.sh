#!/usr/bin/env bash
# Builds every Rust Wasm plugin (the shipped pipelines, the SDK example, the hostile test plugins) as
# components for wasm32-unknown-unknown, linked by rustup's wasm-component-ld (no WASI imports), and
# copies them to plugins/<name>.wasm, examples/<name>.wasm and .cache/test-plugins/<name>.wasm.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target list --installed 2>/dev/null | grep -q wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
BIN="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin"
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER="$BIN/wasm-component-ld"
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS="-Ctarget-feature=+simd128 -Clink-arg=--wasm-ld-path=$BIN/gcc-ld/wasm-ld -Clink-arg=--wasi-adapter=none"
out=target/wasm32-unknown-unknown/release
shipped=(baseline critic rho1 verifiable)
args=()
for p in "${shipped[@]}"; do args+=(-p "wmtp-plugin-$p"); done
cargo build --release --target wasm32-unknown-unknown "${args[@]}"
for p in "${shipped[@]}"; do cp "$out/wmtp_plugin_$p.wasm" "plugins/$p.wasm"; done
echo "plugins: built ${shipped[*]}"
cargo build --quiet --release --target wasm32-unknown-unknown -p wmtp-example-focal -p wmtp-example-inverse-frequency
cp "$out/wmtp_example_focal.wasm" examples/focal.wasm
cp "$out/wmtp_example_inverse_frequency.wasm" examples/inverse_frequency.wasm

# test plugins: one hostile build per behaviour, plus the foreign-import and old-contract ones
mkdir -p .cache/test-plugins
for b in spin oom panic bad_len nan flood metric_escape many_metrics spoof_metrics huge_error bad_version big_all_reduce huge_coef max_coef many_trains bad_default fresh_metrics; do
  cargo build --quiet --release --target wasm32-unknown-unknown -p wmtp-hostile --features "$b"
  cp "$out/wmtp_hostile.wasm" ".cache/test-plugins/hostile_$b.wasm"
done
cargo build --quiet --release --target wasm32-unknown-unknown -p wmtp-hostile-foreign-import -p wmtp-hostile-old-contract
cp "$out/wmtp_hostile_foreign_import.wasm" .cache/test-plugins/hostile_foreign_import.wasm
cp "$out/wmtp_hostile_old_contract.wasm" .cache/test-plugins/hostile_old_contract.wasm
echo "plugins: built test plugins into .cache/test-plugins"
# a WASI-p2 component (what other languages' toolchains produce): accepted, with an empty WASI context
rustup target list --installed 2>/dev/null | grep -q wasm32-wasip2 || rustup target add wasm32-wasip2
CARGO_TARGET_DIR=target/wasip2 cargo build --quiet --release --target wasm32-wasip2 -p wmtp-hostile --features fs
cp target/wasip2/wasm32-wasip2/release/wmtp_hostile.wasm .cache/test-plugins/hostile_wasip2_fs.wasm
CARGO_TARGET_DIR=target/wasip2 cargo build --quiet --release --target wasm32-wasip2 -p wmtp-hostile --features sleep
cp target/wasip2/wasm32-wasip2/release/wmtp_hostile.wasm .cache/test-plugins/hostile_wasip2_sleep.wasm
CARGO_TARGET_DIR=target/wasip2 cargo build --quiet --release --target wasm32-wasip2 -p wmtp-hostile --features stdin
cp target/wasip2/wasm32-wasip2/release/wmtp_hostile.wasm .cache/test-plugins/hostile_wasip2_stdin.wasm
