//! What `wmtp plugin describe` prints, and the plugin table a run config hands to a plugin.

use crate::bindings::{group_name, input_name};
use crate::{ContractVersion, Manifest};
use anyhow::{bail, Context, Result};
use std::fmt::Write;
use std::path::Path;

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

/// A manifest as text: name, version, description, the contract version it was built against, needed
/// inputs, trained groups, gradients and every config key with its default and doc.
pub fn describe_manifest(m: &Manifest, contract: ContractVersion) -> String {
    let mut out = String::new();
    let list = |xs: Vec<&str>| {
        if xs.is_empty() {
            "-".to_string()
        } else {
            xs.join(", ")
        }
    };
    let _ = writeln!(out, "{} {} — {}", m.name, m.version, m.description);
    let _ = writeln!(out, "contract  wmtp:pipeline@{}", contract.as_str());
    let _ = writeln!(
        out,
        "needs     {}",
        list(m.needs.iter().map(|n| input_name(*n)).collect())
    );
    let _ = writeln!(
        out,
        "trains    {}",
        list(m.trains.iter().map(|g| group_name(*g)).collect())
    );
    let _ = writeln!(
        out,
        "gradients {}{}",
        if m.uses_ce { "CE" } else { "" },
        if m.uses_values_grad { " + values" } else { "" }
    );
    if m.config_keys.is_empty() {
        let _ = writeln!(out, "config    (no keys)");
        return out;
    }
    let _ = writeln!(out, "config keys ([plugin] table):");
    let w = m
        .config_keys
        .iter()
        .map(|k| k.name.len() + k.default_value.len() + 3)
        .max()
        .unwrap_or(0);
    for k in &m.config_keys {
        let _ = writeln!(
            out,
            "  {:<w$}  {}",
            format!("{} = {}", k.name, k.default_value),
            k.doc
        );
    }
    out
}
