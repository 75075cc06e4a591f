//! wmtp-plugin-host: loads and runs wmtp pipeline plugins (WebAssembly components implementing
//! `sdk/wit/pipeline.wit`) in a sandbox, validates every answer, and checks plugins with the conformance
//! kit. It knows nothing of tensors or models (no candle, no tokenizers): the training host, a plugin
//! author's tests and any other host use it alone. `docs/design.md` describes the contract.

pub mod artifact_cache;
pub mod bindings;
pub mod budget;
pub mod compile_budget;
pub mod conformance;
pub mod deadline_poll;
pub mod describe;
pub mod host_state;
pub mod instance;
pub mod limits;
pub mod mask;
pub mod runtime;
pub mod text;
pub mod validate;

pub use bindings::{Batch, Coefficients, ConfigKey, InputKind, Manifest, ParamGroup};
pub use instance::Plugin;
pub use limits::PluginLimits;
pub use mask::ce_mask;
pub use runtime::PluginRuntime;
