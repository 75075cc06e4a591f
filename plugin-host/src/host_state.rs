//! What a plugin's store holds: its memory budget, the current call's deadline, an empty deterministic
//! WASI context (for WASI-p2 components), the host imports' state (log counters, the last error message),
//! and the cross-rank reducer. Everything a plugin hands the host here is bounded: log lines by count and
//! bytes per call, and cleaned of control characters; `all-reduce-sum` by `PluginLimits::all_reduce_values`.

use crate::bindings::{wmtp, PipelineImports};
use crate::budget::MemoryBudget;
use crate::limits::PluginLimits;
use crate::text::clean;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// Element-wise sum over ranks (identity on one rank); an error (a rank left, a timeout) ends the
/// plugin's call with that message.
pub type AllReduce = Arc<dyn Fn(&[f64]) -> Result<Vec<f64>, String> + Send + Sync>;

/// A clock frozen at zero: plugins see no time.
struct FrozenClock;

impl wasmtime_wasi::HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// Store data of one plugin instance.
pub struct HostState {
    /// The memory budget (all memories, tables and table elements together).
    pub budget: MemoryBudget,
    /// When the current call's wall-clock cap runs out (blocking WASI waits end there).
    pub deadline: Instant,
    wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    /// The plugin's name, for its log lines.
    pub plugin: String,
    /// Messages logged during the current call, and their bytes.
    pub log_count: usize,
    log_bytes: usize,
    max_messages: usize,
    max_bytes: usize,
    /// Set when the current call exceeded the log limits.
    pub log_flood: bool,
    /// The last error-level message (the SDK's panic hook sends the panic text here), cleaned and capped.
    pub last_error: Option<String>,
    reducer: AllReduce,
    max_reduce: usize,
    /// The tokenizer's pieces by id, for the `vocabulary` import (empty without a tokenizer).
    pub vocabulary: Arc<Vec<String>>,
}

impl HostState {
    /// State for a plugin named `plugin` under `limits`.
    pub fn new(plugin: &str, limits: &PluginLimits, reducer: AllReduce) -> Self {
        let wasi = wasmtime_wasi::WasiCtxBuilder::new()
            .wall_clock(FrozenClock)
            .monotonic_clock(FrozenClock)
            .secure_random(wasmtime_wasi::Deterministic::new(vec![42, 7, 99, 3]))
            .insecure_random(wasmtime_wasi::Deterministic::new(vec![17, 5, 64, 1]))
            .insecure_random_seed(0)
            .build();
        HostState {
            budget: MemoryBudget::new(limits.memory_bytes),
            deadline: Instant::now() + limits.call_timeout,
            wasi,
            table: ResourceTable::new(),
            plugin: plugin.to_string(),
            log_count: 0,
            log_bytes: 0,
            max_messages: limits.log_messages_per_call,
            max_bytes: limits.log_bytes_per_call,
            log_flood: false,
            last_error: None,
            reducer,
            max_reduce: limits.all_reduce_values,
            vocabulary: Arc::new(Vec::new()),
        }
    }

    /// Resets the per-call counters before a call that must end by `deadline`.
    pub fn begin_call(&mut self, deadline: Instant) {
        self.deadline = deadline;
        self.log_count = 0;
        self.log_bytes = 0;
        self.log_flood = false;
        self.last_error = None;
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wmtp::pipeline::types::Host for HostState {}

impl PipelineImports for HostState {
    fn log(&mut self, level: u8, msg: String) -> wasmtime::Result<()> {
        self.log_count += 1;
        self.log_bytes += msg.len();
        if self.log_count > self.max_messages || self.log_bytes > self.max_bytes {
            self.log_flood = true;
            wasmtime::bail!(
                "log flood: more than {} messages or {} bytes in one call",
                self.max_messages,
                self.max_bytes
            );
        }
        let p = &self.plugin;
        let msg = clean(&msg);
        match level {
            0 => {
                tracing::error!(plugin = %p, "{msg}");
                self.last_error = Some(msg);
            }
            1 => tracing::warn!(plugin = %p, "{msg}"),
            2 => tracing::info!(plugin = %p, "{msg}"),
            _ => tracing::debug!(plugin = %p, "{msg}"),
        }
        Ok(())
    }

    fn all_reduce_sum(&mut self, xs: Vec<f64>) -> wasmtime::Result<Vec<f64>> {
        if xs.len() > self.max_reduce {
            wasmtime::bail!(
                "all-reduce-sum of {} values refused: the limit is {} values per call",
                xs.len(),
                self.max_reduce
            );
        }
        (self.reducer)(&xs).map_err(|e| wasmtime::format_err!("all-reduce-sum across ranks: {e}"))
    }

    fn vocabulary(&mut self) -> wasmtime::Result<Vec<String>> {
        Ok(self.vocabulary.as_ref().clone())
    }
}
