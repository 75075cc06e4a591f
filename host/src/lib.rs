//! wmtp host: the LoRA-injected multi-token-prediction Transformer, its loaders and the `wmtp` command.
//! SPEC.md says what is computed; ARCHITECTURE.md where it lives.

pub mod cli;
pub mod data;
pub mod model;
pub mod plugin;
pub mod train;
