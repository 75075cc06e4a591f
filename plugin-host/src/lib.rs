//! wmtp-plugin-host: loads and runs wmtp pipeline plugins (WebAssembly components implementing
//! `sdk/wit/pipeline.wit`) in a sandbox, validates every answer, and checks plugins with the conformance
//! kit. It knows nothing of tensors or models (no candle, no tokenizers): the training host, a plugin
//! author's tests and any other host use it alone. `docs/design.md` describes the contract.

//!
//! The surface is what this file re-exports, plus [`conformance`] (the kit plugin authors' tests call);
//! every other module is private.

mod artifact_cache;
mod bindings;
mod budget;
mod compile_budget;
pub mod conformance;
mod contract;
mod deadline_poll;
mod describe;
mod host_state;
mod instance;
mod limits;
mod mask;
mod runtime;
mod text;
mod validate;

pub use bindings::{Batch, Coefficients, ConfigKey, InputKind, Manifest, ParamGroup};
pub use bindings::{COMPATIBLE_VERSIONS, CONTRACT_VERSION};
pub use compile_budget::{measure as measure_code, CodeShape, CompileBudget};
pub use contract::ContractVersion;
pub use describe::{describe_manifest, plugin_table_of};
pub use host_state::AllReduce;
pub use instance::Plugin;
pub use limits::PluginLimits;
pub use mask::ce_mask;
pub use runtime::{default_cache_dir, PluginRuntime};
pub use validate::{MAX_CONFIG_KEYS, MAX_METRICS};
