//! Host-side bindings of `sdk/wit/pipeline.wit` (wasmtime `bindgen!`); the host imports `log` and
//! `all-reduce-sum` may trap (a log flood ends the call).

wasmtime::component::bindgen!({
    path: "../sdk/wit",
    world: "pipeline",
    imports: { default: trappable },
});

pub use wmtp::pipeline::types::{ConfigKey, InputKind, ParamGroup};

/// The contract version this host speaks (the WIT package version).
pub const CONTRACT_VERSION: &str = "0.1.0";
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

/// The WIT name of an input kind (`values`, `reference`, `rewards`, `pairs`).
pub fn input_name(k: InputKind) -> &'static str {
    match k {
        InputKind::Values => "values",
        InputKind::Reference => "reference",
        InputKind::Rewards => "rewards",
        InputKind::Pairs => "pairs",
    }
}
