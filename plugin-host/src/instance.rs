//! `Plugin`: one loaded pipeline plugin. Every call runs under the runtime's limits (memory cap,
//! wall-clock cap, optional fuel, log-flood cap) — instantiation too, whose start functions run plugin
//! code; every failure is an error naming the plugin and the export, with the plugin's own text cleaned
//! of control characters and capped (`text`); every answer is validated before use. After a trap the instance is discarded and the next
//! call gets a fresh one with the last configuration re-applied (state since the last `load_state` is
//! lost, which the error says).

use crate::bindings::{Batch, Coefficients, Manifest};
use crate::contract::{ContractVersion, Exports};
use crate::deadline_poll::BlockedPastDeadline;
use crate::host_state::HostState;
use crate::runtime::{ComponentImports, PluginRuntime, EPOCH_TICK};
use crate::text::clean;
use crate::validate::{check_coefficients, check_manifest, cleaned_manifest};
use anyhow::{anyhow, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use wasmtime::component::Component;
use wasmtime::{Store, Trap};

/// A loaded, sandboxed pipeline plugin.
pub struct Plugin {
    runtime: Arc<PluginRuntime>,
    path: PathBuf,
    label: String,
    component: Component,
    sha256: String,
    imports: ComponentImports,
    live: Option<(Store<HostState>, Exports)>,
    manifest: Manifest,
    config: Option<String>,
    vocabulary: Arc<Vec<String>>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Plugin({})", self.label)
    }
}

impl Plugin {
    /// Compiles and instantiates the plugin at `path`, reads and validates its manifest.
    pub fn load(runtime: &Arc<PluginRuntime>, path: &Path) -> Result<Self> {
        let (component, sha256, imports) = runtime.compile(path)?;
        let label = format!("plugin {}", path.display());
        let mut p = Plugin {
            runtime: runtime.clone(),
            path: path.to_path_buf(),
            label,
            component,
            sha256,
            imports,
            live: None,
            manifest: Manifest {
                name: String::new(),
                version: String::new(),
                description: String::new(),
                needs: vec![],
                trains: vec![],
                uses_ce: true,
                uses_values_grad: false,
                config_keys: vec![],
            },
            config: None,
            vocabulary: Arc::new(Vec::new()),
        };
        let m = p.call("describe", |pl, st| pl.describe(st))?;
        check_manifest(&m).map_err(|e| anyhow!("{}: invalid manifest: {e}", p.label))?;
        p.label = format!("plugin `{}` ({})", m.name, path.display());
        if let Some((st, _)) = &mut p.live {
            st.data_mut().plugin = m.name.clone();
        }
        p.manifest = cleaned_manifest(m);
        Ok(p)
    }

    /// Hex SHA-256 of the bytes that were compiled (what a checkpoint records as the plugin's identity).
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The contract version the plugin was built against.
    pub fn contract(&self) -> ContractVersion {
        self.imports.contract
    }

    /// Whether the plugin imports `vocabulary` (only then does [`Plugin::set_vocabulary`] matter).
    pub fn uses_vocabulary(&self) -> bool {
        self.imports.vocabulary
    }

    /// Makes the tokenizer's pieces (by token id) what the plugin's `vocabulary` import returns, in
    /// this instance and in any fresh one after a restart. Set it before `configure`.
    pub fn set_vocabulary(&mut self, pieces: Arc<Vec<String>>) {
        if let Some((st, _)) = &mut self.live {
            st.data_mut().vocabulary = pieces.clone();
        }
        self.vocabulary = pieces;
    }

    /// The plugin's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// `plugin \`name\` (path)`, as used in errors.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn instantiate(&self) -> Result<(Store<HostState>, Exports)> {
        let rt = &self.runtime;
        let name = if self.manifest.name.is_empty() {
            self.path.display().to_string()
        } else {
            self.manifest.name.clone()
        };
        let mut store = Store::new(
            &rt.engine,
            HostState::new(&name, &rt.limits, rt.reducer.clone()),
        );
        store.data_mut().vocabulary = self.vocabulary.clone();
        store.limiter(|s| &mut s.budget);
        // instantiation runs the component's start functions: plugin code, under the same caps as a call
        arm(&mut store, rt)?;
        // instantiate first, then look the exports up: a component's start functions are plugin code and
        // run (under the caps) before anything can be said about its exports
        let pl = rt
            .linker
            .instantiate(&mut store, &self.component)
            .and_then(|instance| Exports::new(self.imports.contract, &mut store, &instance))
            .map_err(|e| {
                if trapped(&e, store.data()) {
                    let msg = describe_trap(&e, store.data(), rt);
                    anyhow!("{}: instantiation failed: {msg}", self.label)
                } else {
                    anyhow!(
                        "{}: does not implement the wmtp:pipeline@{} world: {}",
                        self.label,
                        self.imports.contract.as_str(),
                        clean(&format!("{e:#}"))
                    )
                }
            })?;
        Ok((store, pl))
    }

    /// Runs one export under the limits, turning traps into errors that say what happened.
    fn call<R>(
        &mut self,
        export: &str,
        f: impl FnOnce(&Exports, &mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R> {
        if self.live.is_none() {
            let mut fresh = self.instantiate()?;
            if let Some(cfg) = self.config.clone() {
                let (st, pl) = &mut fresh;
                arm(st, &self.runtime)?;
                match pl.configure(&mut *st, &cfg) {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        return self.refused("configure (re-applied after a restart)", Err(e))
                    }
                    Err(e) => {
                        return Err(anyhow!(
                            "{}: configure trapped after a restart: {}",
                            self.label,
                            describe_trap(&e, st.data(), &self.runtime)
                        ))
                    }
                }
            }
            self.live = Some(fresh);
        }
        let Some((store, pl)) = &mut self.live else {
            unreachable!("instantiated above")
        };
        arm(store, &self.runtime)?;
        match f(pl, store) {
            Ok(r) => Ok(r),
            Err(e) => {
                let msg = describe_trap(&e, store.data(), &self.runtime);
                self.live = None; // the instance may be corrupt: the next call starts a fresh one
                Err(anyhow!("{}: {export} failed: {msg} (the plugin was restarted; its in-memory state is lost)", self.label))
            }
        }
    }

    /// `r`, with a plugin's own error string (cleaned and capped) turned into an error naming the plugin
    /// and what it refused.
    fn refused<T>(&self, what: &str, r: std::result::Result<T, String>) -> Result<T> {
        r.map_err(|e| anyhow!("{}: {what}: {}", self.label, clean(&e)))
    }

    /// Applies the `[plugin]` TOML table; rejected settings leave the plugin as it was.
    pub fn configure(&mut self, toml: &str) -> Result<()> {
        let r = self.call("configure", |pl, st| pl.configure(st, toml))?;
        self.refused("configure rejected the settings", r)?;
        self.config = Some(toml.to_string());
        Ok(())
    }

    /// Coefficients for one micro-batch, validated against it.
    pub fn weigh(&mut self, batch: &Batch, train: bool) -> Result<Coefficients> {
        let r = self.call("weigh", |pl, st| pl.weigh(st, batch, train))?;
        let c = self.refused("weigh returned an error", r)?;
        check_coefficients(&c, batch, &self.manifest)
            .map_err(|e| anyhow!("{}: weigh: {e}", self.label))?;
        Ok(c)
    }

    /// Notifies the plugin that optimizer step `step` finished.
    pub fn after_step(&mut self, step: u64) -> Result<()> {
        let r = self.call("after-step", |pl, st| pl.after_step(st, step))?;
        self.refused("after-step returned an error", r)
    }

    /// The plugin's state bytes, for a checkpoint.
    pub fn save_state(&mut self) -> Result<Vec<u8>> {
        let state = self.call("save-state", |pl, st| pl.save_state(st))?;
        let cap = self.runtime.limits.state_bytes;
        if state.len() > cap {
            anyhow::bail!(
                "{}: save-state returned {} MiB of state; the limit is {} MiB",
                self.label,
                state.len() >> 20,
                cap >> 20
            );
        }
        Ok(state)
    }

    /// Restores state bytes from [`Plugin::save_state`].
    pub fn load_state(&mut self, state: &[u8]) -> Result<()> {
        let r = self.call("load-state", |pl, st| pl.load_state(st, state))?;
        self.refused("load-state rejected the state", r)
    }
}

/// Sets the per-call wall-clock deadline (epochs for Wasm code, an instant for blocking WASI waits) and
/// fuel, and clears the per-call log counters.
fn arm(store: &mut Store<HostState>, rt: &PluginRuntime) -> Result<()> {
    let ticks = (rt.limits.call_timeout.as_nanos() / EPOCH_TICK.as_nanos()).max(1) as u64 + 1;
    store.set_epoch_deadline(ticks);
    if let Some(f) = rt.limits.fuel_per_call {
        store.set_fuel(f).map_err(|e| anyhow!("{e}"))?;
    }
    store
        .data_mut()
        .begin_call(Instant::now() + rt.limits.call_timeout);
    Ok(())
}

/// Whether an instantiation error came from running plugin code (a trap, a blocked wait, the memory
/// budget) rather than from the component's shape.
fn trapped(e: &wasmtime::Error, st: &HostState) -> bool {
    st.budget.exceeded
        || e.downcast_ref::<Trap>().is_some()
        || e.chain()
            .any(|c| c.downcast_ref::<BlockedPastDeadline>().is_some())
}

/// What went wrong in a call, in words: the cap that stopped it, the plugin's own panic text, or the
/// root cause of a failed host import; plugin text cleaned and capped.
fn describe_trap(e: &wasmtime::Error, st: &HostState, rt: &PluginRuntime) -> String {
    if st.log_flood {
        return format!(
            "log flood: more than {} messages or {} KiB of log in one call",
            rt.limits.log_messages_per_call,
            rt.limits.log_bytes_per_call >> 10
        );
    }
    let wall = || {
        format!(
            "exceeded the wall-clock limit of {:?} per call",
            rt.limits.call_timeout
        )
    };
    if let Some(b) = e
        .chain()
        .find_map(|c| c.downcast_ref::<BlockedPastDeadline>())
    {
        return format!("{} ({b})", wall());
    }
    if st.budget.exceeded {
        return format!(
            "exceeded the memory limit of {} MiB (all memories and tables together)",
            rt.limits.memory_bytes >> 20
        );
    }
    let panic = st
        .last_error
        .as_ref()
        .map(|m| format!(" — last error it logged: {m}"))
        .unwrap_or_default();
    match (e.downcast_ref::<Trap>(), &st.last_error) {
        (Some(Trap::Interrupt), _) => wall(),
        (Some(Trap::OutOfFuel), _) => format!(
            "ran out of fuel ({} units per call)",
            rt.limits.fuel_per_call.unwrap_or(0)
        ),
        // the SDK's panic hook logged "plugin panicked: <message>" just before the trap
        (Some(Trap::UnreachableCodeReached), Some(m)) => m.clone(),
        (Some(t), _) => format!("trapped: {t}{panic}"),
        // a host import refused (all-reduce too large, …): its message is the root cause; the outer
        // layers only say "error while executing at wasm backtrace"
        (None, _) => clean(&format!("{}{panic}", e.root_cause())),
    }
}
