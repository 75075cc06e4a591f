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

impl From<ParamGroup> for crate::model::ParamGroup {
    fn from(g: ParamGroup) -> Self {
        match g {
            ParamGroup::Lora => crate::model::ParamGroup::Lora,
            ParamGroup::ValueHead => crate::model::ParamGroup::ValueHead,
            ParamGroup::Heads => crate::model::ParamGroup::Heads,
            ParamGroup::Trunk => crate::model::ParamGroup::Trunk,
        }
    }
}
