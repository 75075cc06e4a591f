//! The plugin host's integration tests as ONE test binary: the shipped plugins against their references,
//! and the hostile plugins. `cargo test -p wmtp-plugin-host --test plugin_host hostile_plugins::`.

#[path = "common/paths.rs"]
mod common;

mod compile_budget;
mod hostile_plugins;
mod plugin_contract;
mod plugin_pipelines;
