//! The host's integration tests as ONE test binary (wasmtime's tests/all layout): each file of tests/ is a
//! module here, so wmtp-host is linked once instead of once per file. Run one file's tests with a filter:
//! `cargo test -p wmtp-host --test host train_pipelines::` (or a test's name).

mod common;
mod fsdp_support;

mod bad_input;
mod data_packing;
mod engine_equivalence;
mod fsdp;
mod fsdp_prefetch;
mod fuzz_regressions;
mod gpu;
mod hf_interop;
mod kill_safety;
mod lora_model;
mod memory_over_steps;
mod model_info;
mod model_reference;
mod plugin_kit;
mod plugin_tokens;
mod python_plugin;
mod sentencepiece_exact;
mod smollm2;
mod strategy_seam;
mod train_pipelines;
mod train_tools;
mod weights_guard;
