//! Training: the block-wise engine, configuration, sessions, stages, the step and validation (saving
//! and restoring a session is `host/src/checkpoint/`, the `wmtp run` loop `host/src/run/`).

pub mod auto_checkpointing;
pub mod build;
pub mod config;
pub mod config_source;
pub mod engine;
pub mod evaluate;
pub mod guard;
pub mod head_ce;
pub mod host_memory;
pub mod plugin_ranks;
pub mod policy;
pub mod reference;
pub mod schedule;
pub mod session;
pub mod session_step;
pub mod shard_init;
pub mod stage_switch;
pub mod stages;
pub mod step;
pub mod trainable;
