//! Host-side bindings of `sdk/wit/pipeline.wit`, the current contract (wasmtime `bindgen!`), and in
//! [`v0_1`] of the frozen 0.1.0 contract (`plugin-host/wit/v0.1`) that older plugins were built against;
//! the host imports `log`, `all-reduce-sum` and `vocabulary` may trap (a log flood ends the call).

wasmtime::component::bindgen!({
    path: "../sdk/wit",
    world: "pipeline",
    imports: { default: trappable },
});

/// The wmtp:pipeline@0.1.0 contract's bindings: the exports of plugins built against it (their imports,
/// `log` and `all-reduce-sum`, are the current contract's, served by the same linker).
pub mod v0_1 {
    wasmtime::component::bindgen!({
        path: "wit/v0.1",
        world: "pipeline",
        imports: { default: trappable },
    });
}

pub use wmtp::pipeline::types::{ConfigKey, InputKind, ParamGroup};

/// The contract version this host speaks (the WIT package version of `sdk/wit`).
pub const CONTRACT_VERSION: &str = "0.2.0";
/// Earlier contract versions whose plugins still load and run ([`v0_1`]).
pub const COMPATIBLE_VERSIONS: [&str; 1] = ["0.1.0"];
/// The contract's package name.
pub const CONTRACT_PACKAGE: &str = "wmtp:pipeline";

/// The config name of a parameter group (`lora`, `value_head`, `heads`, `trunk`).
pub fn group_name(g: ParamGroup) -> &'static str {
    match g {
        ParamGroup::Lora => "lora",
        ParamGroup::ValueHead => "value_head",
        ParamGroup::Heads => "heads",
        ParamGroup::Trunk => "trunk",
    }
}

/// The WIT name of an input kind (`values`, `reference`, `rewards`, `pairs`, `tokens`).
pub fn input_name(k: InputKind) -> &'static str {
    match k {
        InputKind::Values => "values",
        InputKind::Reference => "reference",
        InputKind::Rewards => "rewards",
        InputKind::Pairs => "pairs",
        InputKind::Tokens => "tokens",
    }
}
