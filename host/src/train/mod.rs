//! Training: the block-wise engine, gradients, the optimiser, configuration, sessions, steps,
//! checkpoints and the `wmtp run` loop.

pub mod checkpoint;
pub mod config;
pub mod config_source;
pub mod console;
pub mod engine;
pub mod evaluate;
pub mod guard;
pub mod host_memory;
pub mod metrics_log;
pub mod optim;
pub mod plot;
pub mod plugin_ranks;
pub mod progress;
pub mod reference;
pub mod resume;
pub mod run;
pub mod run_loop;
pub mod run_setup;
pub mod schedule;
pub mod session;
pub mod stages;
pub mod step;
pub mod tools;
pub mod trainable;
