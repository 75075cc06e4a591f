//! Building a session the way a run does: the pipeline plugin loaded; then, when the pipeline needs
//! reference losses, the reference model — a model the config names, or the automatic baseline stage
//! (reference.rs), trained before the session exists; then the session itself (session.rs) around both.
//! [`load_plugin`] loads, limits and configures the plugin as a run does.

use super::config::RunConfig;
use super::plugin_ranks::PluginRanks;
use super::reference::reference_model;
use super::session::{load_options, Session};
use super::step::Weigher;
use crate::data::tokenizer::Tokenizer;
use anyhow::{Context, Result};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use wmtp_plugin_host::{InputKind, Plugin, PluginLimits, PluginRuntime};

impl Session {
    /// Builds a session for the pipeline plugin at `pipeline_path`.
    pub fn new(cfg: RunConfig, pipeline_path: &Path) -> Result<Self> {
        Self::new_for(cfg, pipeline_path, None)
    }

    /// [`Session::new`]; `shard_place`: (world size, rank) when the session will be sharded
    /// ([`Session::shard`]), so the policy is built in host memory and only this rank's shards ever
    /// reach `model.device` — no rank holds the whole model on its GPU, not even while starting (the
    /// value head and reference models go to the device as usual); a preset with a frozen base draws
    /// only the weights this rank's shards read ([`super::shard_init`]).
    pub fn new_for(
        cfg: RunConfig,
        pipeline_path: &Path,
        shard_place: Option<(usize, usize)>,
    ) -> Result<Self> {
        let ranks = PluginRanks::default();
        let plugin = load_plugin(&cfg, pipeline_path, &ranks)?;
        let mut s = build(cfg, Box::new(plugin), pipeline_path, shard_place)?;
        s.plugin_ranks = ranks;
        Ok(s)
    }

    /// Builds a session around any pipeline (`label` names it in summaries and checkpoints).
    pub fn with_weigher(cfg: RunConfig, weigher: Box<dyn Weigher>, label: &Path) -> Result<Self> {
        build(cfg, weigher, label, None)
    }
}

/// The reference model first (when the pipeline needs one), then the session, both on one device.
fn build(
    cfg: RunConfig,
    weigher: Box<dyn Weigher>,
    label: &Path,
    shard_place: Option<(usize, usize)>,
) -> Result<Session> {
    let device = cfg.model.device.open().context("model.device")?;
    let reference = if weigher.manifest().needs.contains(&InputKind::Reference) {
        Some(reference_model(&cfg, &load_options(&cfg, &device)?)?)
    } else {
        None
    };
    Session::assemble(cfg, weigher, label, shard_place, &device, reference)
}

/// Loads the pipeline plugin at `path` under the config's limits, gives it the model's vocabulary and
/// configures it with `[plugin]`; its `all-reduce-sum` sums over `ranks`.
pub fn load_plugin(cfg: &RunConfig, path: &Path, ranks: &PluginRanks) -> Result<Plugin> {
    let limits = PluginLimits {
        call_timeout: Duration::from_secs_f64(cfg.runtime.plugin_timeout_s),
        memory_bytes: cfg.runtime.plugin_memory_mb << 20,
        fuel_per_call: (cfg.runtime.plugin_fuel > 0).then_some(cfg.runtime.plugin_fuel),
        compile: wmtp_plugin_host::CompileBudget {
            time: Duration::from_secs_f64(cfg.runtime.plugin_compile_s),
            ..Default::default()
        },
        ..Default::default()
    };
    let runtime = Arc::new(PluginRuntime::with_options(
        limits,
        ranks.reducer(),
        wmtp_plugin_host::default_cache_dir(),
    )?);
    let mut plugin = Plugin::load(&runtime, path)?;
    // the model's vocabulary, for the plugin's `vocabulary` import (from configure on); read only for
    // a plugin that imports it (the session reads the tokenizer again with the model)
    if plugin.uses_vocabulary() {
        let tokenizer = crate::formats::load::load_tokenizer(&cfg.model.path)
            .with_context(|| format!("the tokenizer of {} (for the plugin)", cfg.model.path))?
            .unwrap_or_else(Tokenizer::bytes);
        plugin.set_vocabulary(Arc::new(tokenizer.pieces()));
    }
    plugin.configure(&toml::to_string(&cfg.plugin)?)?;
    Ok(plugin)
}
