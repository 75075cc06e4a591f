//! Training: the block-wise engine, gradients, the optimiser, configuration, sessions, steps,
//! checkpoints and the `wmtp run` loop.

pub mod checkpoint;
pub mod config;
pub mod config_source;
pub mod engine;
pub mod evaluate;
pub mod guard;
pub mod host_memory;
pub mod plugin_ranks;
pub mod reference;
pub mod schedule;
pub mod session;
pub mod stages;
pub mod step;
pub mod tools;
pub mod trainable;
