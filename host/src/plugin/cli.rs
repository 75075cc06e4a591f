//! `wmtp plugin describe` and `wmtp plugin check`.

use super::conformance::check_plugin;
use super::{Plugin, PluginLimits, PluginRuntime};
use crate::cli::PluginCommand;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The plugin table of a run config: its `[plugin]` table, or the whole file when it has none.
pub fn plugin_table_of(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))?;
    Ok(match table.get("plugin") {
        Some(toml::Value::Table(t)) => toml::to_string(t)?,
        Some(_) => bail!("{}: `plugin` must be a table", path.display()),
        None => text,
    })
}

/// Runs a `wmtp plugin` subcommand.
pub fn run(cmd: PluginCommand) -> Result<()> {
    match cmd {
        PluginCommand::Describe { plugin } => describe(&plugin),
        PluginCommand::Check {
            plugins,
            config,
            budget_ms,
        } => {
            let cfg = match &config {
                Some(p) => plugin_table_of(p)?,
                None => String::new(),
            };
            let mut failed = 0;
            for p in &plugins {
                let report = check_plugin(p, &cfg, Duration::from_millis(budget_ms))?;
                println!("{report}");
                if let Some(t) = report.big_batch_time {
                    println!(
                        "  (64k tokens × 4 heads: {:.2} ms per weigh)",
                        t.as_secs_f64() * 1e3
                    );
                }
                failed += !report.passed() as usize;
            }
            if failed > 0 {
                bail!("{failed} of {} plugin(s) failed conformance", plugins.len());
            }
            Ok(())
        }
    }
}

fn describe(path: &Path) -> Result<()> {
    let rt = Arc::new(PluginRuntime::new(PluginLimits::default())?);
    let p = Plugin::load(&rt, path)?;
    let m = p.manifest();
    println!("{} {} — {}", m.name, m.version, m.description);
    println!(
        "contract  wmtp:pipeline@{}",
        super::bindings::CONTRACT_VERSION
    );
    let needs: Vec<&str> = m.needs.iter().map(|n| input_name(*n)).collect();
    let trains: Vec<&str> = m
        .trains
        .iter()
        .map(|g| crate::model::ParamGroup::from(*g).name())
        .collect();
    println!(
        "needs     {}",
        if needs.is_empty() {
            "-".into()
        } else {
            needs.join(", ")
        }
    );
    println!("trains    {}", trains.join(", "));
    println!(
        "gradients {}{}",
        if m.uses_ce { "CE" } else { "" },
        if m.uses_values_grad { " + values" } else { "" }
    );
    if m.config_keys.is_empty() {
        println!("config    (no keys)");
    } else {
        println!("config keys ([plugin] table):");
        let w = m
            .config_keys
            .iter()
            .map(|k| k.name.len() + k.default_value.len() + 3)
            .max()
            .unwrap_or(0);
        for k in &m.config_keys {
            println!(
                "  {:<w$}  {}",
                format!("{} = {}", k.name, k.default_value),
                k.doc
            );
        }
    }
    Ok(())
}

/// The WIT name of an input kind.
pub fn input_name(k: super::InputKind) -> &'static str {
    match k {
        super::InputKind::Values => "values",
        super::InputKind::Reference => "reference",
        super::InputKind::Rewards => "rewards",
        super::InputKind::Pairs => "pairs",
    }
}
