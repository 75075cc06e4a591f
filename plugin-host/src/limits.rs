//! The sandbox's limits for one plugin instance.

use std::time::Duration;

/// Resource caps applied to every plugin call.
#[derive(Debug, Clone)]
pub struct PluginLimits {
    /// One budget for all of a plugin's linear memories, tables and table elements together (a growth
    /// past it traps; see `budget::MemoryBudget`).
    pub memory_bytes: usize,
    /// Wall-clock cap per call (epoch interruption).
    pub call_timeout: Duration,
    /// Deterministic instruction budget per call (wasmtime fuel); None disables fuel metering.
    pub fuel_per_call: Option<u64>,
    /// Most `log` messages per call before the call is stopped as a log flood.
    pub log_messages_per_call: usize,
    /// Most `log` bytes per call.
    pub log_bytes_per_call: usize,
    /// Most values in one `all-reduce-sum` call (each is copied out of the plugin and across ranks).
    pub all_reduce_values: usize,
    /// Largest plugin state (`save-state`) the host keeps and writes into a checkpoint.
    pub state_bytes: usize,
    /// What a plugin's code may look like and how long compiling it may take.
    pub compile: crate::compile_budget::CompileBudget,
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits {
            memory_bytes: 512 << 20,
            call_timeout: Duration::from_secs(10),
            fuel_per_call: None,
            log_messages_per_call: 1000,
            log_bytes_per_call: 256 << 10,
            all_reduce_values: 1 << 20,
            state_bytes: 64 << 20,
            compile: Default::default(),
        }
    }
}
