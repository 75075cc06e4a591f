//! `wmtp eval` (validation CE of a checkpoint, plain and pipeline-weighted) and `wmtp merge` (a
//! checkpoint's adapter folded into its base model, written as a full safetensors checkpoint).

use super::checkpoint::{load_into, read_meta};
use super::session::Session;
use crate::model::adapter::{load_adapter, save_full};
use crate::model::load::{load_model, LoadOptions};
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// Validation of checkpoint `ckpt` (optionally on another JSONL file): (plain CE, pipeline loss).
pub fn eval_checkpoint(
    ckpt: &Path,
    data: Option<&str>,
    pipeline: Option<PathBuf>,
) -> Result<(f64, f64)> {
    let (mut cfg, st) = read_meta(ckpt)?;
    if let Some(d) = data {
        cfg.data.validation = d.to_string();
    }
    let pipeline = pipeline.unwrap_or_else(|| PathBuf::from(&st.pipeline));
    let mut s = Session::new(cfg, &pipeline)?;
    load_into(ckpt, &mut s, &st)?;
    match s.validate()? {
        Some(v) => Ok((v.ce, v.loss)),
        None => bail!("no validation data (set data.validation or data.val_fraction)"),
    }
}

/// Writes the checkpoint's model with its LoRA adapter merged (or its full weights) to `out` as
/// `params.json` + `model.safetensors` (+ `value_head.safetensors`), loadable by `--model out`.
pub fn merge_checkpoint(ckpt: &Path, out: &Path) -> Result<()> {
    let (cfg, _) = read_meta(ckpt)?;
    let opts = super::session::load_options(&cfg, &candle_core::Device::Cpu)?;
    if ckpt.join("adapter").exists() {
        let mut model = load_model(&cfg.model.path, &opts)?.model;
        let vh = load_adapter(&ckpt.join("adapter"), &mut model)?;
        save_full(out, &model, vh.as_ref())
    } else {
        let src = ckpt.join("model");
        let lm = load_model(
            src.to_str().unwrap_or_default(),
            &LoadOptions {
                n_future_tokens: None,
                ..opts
            },
        )?;
        save_full(out, &lm.model, None)?;
        let vh = src.join("value_head.safetensors");
        if vh.exists() {
            std::fs::copy(&vh, out.join("value_head.safetensors"))?;
        }
        Ok(())
    }
}
