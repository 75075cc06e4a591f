//! The plugin runtime: wasmtime component model, the sandbox's limits, validation of answers, and the
//! conformance checks a plugin must pass.

pub mod bindings;
pub mod cli;
pub mod conformance;
pub mod host_state;
pub mod instance;
pub mod limits;
pub mod runtime;
pub mod validate;

pub use bindings::{Batch, Coefficients, InputKind, Manifest};
pub use instance::Plugin;
pub use limits::PluginLimits;
pub use runtime::PluginRuntime;
