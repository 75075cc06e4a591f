//! `PluginRuntime`: the wasmtime engine and linker shared by all plugins, an epoch ticker for wall-clock
//! caps, WASI with a deadline-aware `wasi:io/poll` (`deadline_poll`), the import check (what a plugin may
//! ask for), and the verified cache of compiled artifacts (`artifact_cache`).

use crate::artifact_cache::ArtifactCache;
use crate::bindings::{Pipeline, COMPATIBLE_VERSIONS, CONTRACT_PACKAGE, CONTRACT_VERSION};
use crate::contract::ContractVersion;
use crate::deadline_poll::{DeadlinePoll, HasDeadlinePoll};
use crate::host_state::{AllReduce, HostState};
use crate::limits::PluginLimits;
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine};
use wasmtime_wasi::p2::bindings::sync::io::poll as sync_poll;

/// Epoch tick: the granularity of the wall-clock cap.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// WASI interfaces a plugin may import (a WASI-p2 component's standard library imports these even when
/// unused). They are served by an empty context: no preopened directories, no environment, no arguments,
/// a frozen clock (sleeps and clock subscriptions still wait in real time, under the call's cap) and fixed
/// random bytes. Sockets, HTTP and anything else are refused at load.
const ALLOWED_WASI: [&str; 5] = [
    "wasi:cli/",
    "wasi:clocks/",
    "wasi:io/",
    "wasi:random/",
    "wasi:filesystem/",
];

/// Shared engine state for loading and running plugins.
pub struct PluginRuntime {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<HostState>,
    pub(crate) limits: PluginLimits,
    pub(crate) reducer: AllReduce,
    cache: Option<ArtifactCache>,
    stop_ticker: Arc<AtomicBool>,
}

impl Drop for PluginRuntime {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

/// The default artifact cache: `$WMTP_CACHE_DIR`, else `$XDG_CACHE_HOME/wmtp/plugins`, else
/// `~/.cache/wmtp/plugins`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("WMTP_CACHE_DIR") {
        return Some(PathBuf::from(d).join("plugins"));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("wmtp").join("plugins"))
}

impl PluginRuntime {
    /// A runtime with `limits`, single-rank reduction and the default artifact cache.
    pub fn new(limits: PluginLimits) -> Result<Self> {
        Self::with_options(
            limits,
            Arc::new(|xs: &[f64]| Ok(xs.to_vec())),
            default_cache_dir(),
        )
    }

    /// A runtime with a cross-rank reducer for `all-reduce-sum` and an optional artifact cache folder.
    pub fn with_options(
        limits: PluginLimits,
        reducer: AllReduce,
        cache_dir: Option<PathBuf>,
    ) -> Result<Self> {
        let mut cfg = Config::new();
        cfg.wasm_component_model(true)
            .epoch_interruption(true)
            .consume_fuel(limits.fuel_per_call.is_some());
        let engine = Engine::new(&cfg).map_err(|e| anyhow!("creating the Wasm engine: {e}"))?;
        let mut linker = Linker::new(&engine);
        Pipeline::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .map_err(|e| anyhow!("linking host imports: {e}"))?;
        // plugins of the 0.1 contract import its (type-only) interface under its own version
        linker
            .instance(&format!(
                "{CONTRACT_PACKAGE}/types@{}",
                ContractVersion::V0_1.as_str()
            ))
            .map_err(|e| anyhow!("linking the 0.1 contract's types: {e}"))?;
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| anyhow!("linking WASI: {e}"))?;
        // wasi:io/poll again, over wasmtime-wasi's: the waits honour the call's wall-clock deadline
        linker.allow_shadowing(true);
        sync_poll::add_to_linker::<HostState, HasDeadlinePoll>(&mut linker, |s| DeadlinePoll {
            table: &mut s.table,
            deadline: s.deadline,
        })
        .map_err(|e| anyhow!("linking the deadline-aware wasi:io/poll: {e}"))?;
        linker.allow_shadowing(false);
        let stop_ticker = Arc::new(AtomicBool::new(false));
        let (weak, stop) = (engine.weak(), stop_ticker.clone());
        std::thread::Builder::new()
            .name("wmtp-plugin-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(e) => e.increment_epoch(),
                        None => break,
                    }
                }
            })
            .context("starting the plugin epoch thread")?;
        Ok(PluginRuntime {
            engine,
            linker,
            limits,
            reducer,
            cache: cache_dir.map(ArtifactCache::new),
            stop_ticker,
        })
    }

    /// The limits every plugin call runs under.
    pub fn limits(&self) -> &PluginLimits {
        &self.limits
    }

    /// Compiles (or loads from the cache) the component in `path` and checks its imports; returns it
    /// with the hex SHA-256 of the bytes compiled (the file is read once, so the digest a checkpoint
    /// records is that of the code that ran, even if the file is replaced meanwhile) and what its
    /// imports say ([`ComponentImports`]).
    pub fn compile(&self, path: &Path) -> Result<(Component, String, ComponentImports)> {
        let bytes =
            std::fs::read(path).with_context(|| format!("reading plugin {}", path.display()))?;
        let sha256 = {
            use sha2::{Digest, Sha256};
            format!("{:x}", Sha256::digest(&bytes))
        };
        crate::compile_budget::measure(&bytes, &self.limits.compile)
            .with_context(|| format!("plugin {}", path.display()))?;
        let component = self.compile_in_time(bytes, path)?;
        let version = self
            .check_imports(&component)
            .with_context(|| format!("plugin {}", path.display()))?;
        Ok((component, sha256, version))
    }

    /// Compiles (or loads from the cache) `bytes` on a thread of its own, waiting at most the compile
    /// budget's time: past it the load fails with an error naming the plugin and the compile is
    /// abandoned (cranelift cannot be interrupted; the caller reports the error and exits).
    fn compile_in_time(&self, bytes: Vec<u8>, path: &Path) -> Result<Component> {
        let (engine, cache) = (self.engine.clone(), self.cache.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("wmtp-plugin-compile".into())
            .spawn(move || {
                let r = match &cache {
                    Some(cache) => cache.compile(&engine, &bytes),
                    None => Component::new(&engine, &bytes).map_err(|e| anyhow!("{e:?}")),
                };
                let _ = tx.send(r);
            })
            .context("starting the plugin compile thread")?;
        let limit = self.limits.compile.time;
        let compiled = match rx.recv_timeout(limit) {
            Ok(r) => r,
            Err(_) => bail!(
                "plugin {}: compiling took longer than {:.0} s (runtime.plugin_compile_s); a plugin this costly to compile is refused",
                path.display(),
                limit.as_secs_f64()
            ),
        };
        compiled.with_context(|| {
            format!(
                "plugin {}: not a valid Wasm component (build it with the wmtp SDK as a component)",
                path.display()
            )
        })
    }

    /// Refuses imports outside the contract and the allowed WASI interfaces, and contract versions the
    /// host does not speak, with a message naming the import; returns the contract version the
    /// component was built against (the current one when it names none) and whether it imports
    /// `vocabulary`.
    fn check_imports(&self, component: &Component) -> Result<ComponentImports> {
        let ty = component.component_type();
        let mut found = None;
        let mut vocabulary = false;
        for (name, _) in ty.imports(&self.engine) {
            if name == "vocabulary" {
                vocabulary = true;
                continue;
            }
            if name == "log" || name == "all-reduce-sum" {
                continue;
            }
            if let Some(rest) = name.strip_prefix(&format!("{CONTRACT_PACKAGE}/")) {
                let version = rest.split_once('@').map(|(_, v)| v).unwrap_or("(none)");
                match ContractVersion::parse(version) {
                    Some(v) if found.is_none_or(|f| f == v) => found = Some(v),
                    Some(_) => bail!("imports two versions of the contract {CONTRACT_PACKAGE}"),
                    None => bail!(
                        "built against contract {CONTRACT_PACKAGE}@{version}, but this host speaks @{CONTRACT_VERSION} (and runs plugins of @{}): rebuild it with a matching wmtp-sdk",
                        COMPATIBLE_VERSIONS.join(", @")
                    ),
                }
                continue;
            }
            if ALLOWED_WASI.iter().any(|p| name.starts_with(p)) {
                continue;
            }
            bail!("imports `{name}`, which the sandbox does not provide (plugins get no network, files, environment or clock)");
        }
        Ok(ComponentImports {
            contract: found.unwrap_or(ContractVersion::V0_2),
            vocabulary,
        })
    }
}

/// What a plugin component's imports say about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ComponentImports {
    /// The contract version it was built against.
    pub contract: ContractVersion,
    /// Whether it imports `vocabulary` (a plugin that never calls it does not import it: the host
    /// need not read the tokenizer for it).
    pub vocabulary: bool,
}
