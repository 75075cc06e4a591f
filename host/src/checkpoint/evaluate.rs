//! A saved checkpoint scored again (`wmtp eval --checkpoint`): the session it describes, rebuilt with its
//! weights and state, validated on its held-out items or on other data, or under another pipeline.

use super::{load_into, load_model_weights, read_meta};
use crate::train::evaluate::Validation;
use crate::train::session::Session;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// The session of checkpoint `ckpt` (its config with `overrides`, its pipeline plugin or `pipeline`),
/// weights and state loaded: its model and tokenizer are the trained ones. Another `pipeline` than the
/// run's gets its own defaults (the run's `[plugin]` table is for the run's plugin) and only the model's
/// weights are loaded (no value head, optimiser or plugin state): that is how pipelines trained
/// differently are scored on the same data and measure.
pub fn checkpoint_session(
    ckpt: &Path,
    overrides: &[String],
    pipeline: Option<PathBuf>,
) -> Result<Session> {
    let (mut cfg, st) = read_meta(ckpt, overrides)?;
    let same = |p: &Path| {
        let canon = |q: &Path| std::fs::canonicalize(q).unwrap_or_else(|_| q.to_path_buf());
        canon(p) == canon(Path::new(&st.pipeline))
    };
    match pipeline {
        Some(p) if !same(&p) => {
            cfg.plugin = Default::default();
            let mut s = Session::new(cfg, &p)?;
            load_model_weights(ckpt, &mut s)?;
            Ok(s)
        }
        _ => {
            let mut s = Session::new(cfg, Path::new(&st.pipeline))?;
            load_into(ckpt, &mut s, &st)?;
            Ok(s)
        }
    }
}

/// Validation of checkpoint `ckpt` (optionally on another JSONL file, or with another pipeline plugin).
pub fn eval_checkpoint(
    ckpt: &Path,
    data: Option<&str>,
    pipeline: Option<PathBuf>,
) -> Result<Validation> {
    let overrides: Vec<String> = data
        .map(|d| format!("data.validation={}", toml::Value::String(d.to_string())))
        .into_iter()
        .collect();
    let mut s = checkpoint_session(ckpt, &overrides, pipeline)?;
    match s.validate()? {
        Some(v) => Ok(v),
        None => bail!("no validation data (set data.validation or data.val_fraction)"),
    }
}
