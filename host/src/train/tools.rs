//! `wmtp merge`: a checkpoint's adapter folded into its base model (or its full weights), written as a
//! full safetensors checkpoint.

use super::checkpoint::read_meta;
use crate::model::adapter::{load_trained, save_full};
use anyhow::Result;
use std::path::Path;

/// Writes the checkpoint's model with its LoRA adapter merged (or its full weights) to `out` as
/// `params.json` + `model.safetensors` (+ `value_head.safetensors`), loadable by `--model out`.
pub fn merge_checkpoint(ckpt: &Path, out: &Path) -> Result<()> {
    let (cfg, _) = read_meta(ckpt, &[])?;
    let opts = super::session::load_options(&cfg, &candle_core::Device::Cpu)?;
    let (model, vh) = load_trained(ckpt, &cfg.model.path, &opts, &cfg.value_head)?;
    save_full(out, &model, vh.as_ref())
}
