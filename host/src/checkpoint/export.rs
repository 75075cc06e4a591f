//! `wmtp merge`: a checkpoint's adapter folded into its base model (or its full weights), written as a
//! full checkpoint in Meta or Hugging Face layout; `wmtp export --format peft`: its adapter as a PEFT
//! adapter.

use super::read_meta;
use crate::formats::adapter::save_full;
use crate::formats::checkpoint::load_trained;
use crate::formats::hf_export::{export_peft, save_hf_merged};
use crate::model::{Transformer, ValueHead};
use anyhow::{bail, Context, Result};
use std::path::Path;

/// The layout `wmtp merge` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MergeFormat {
    /// `params.json` + `model.safetensors`, Meta names, q/k interleaved (wmtp's own; `--model` reads it).
    #[default]
    Meta,
    /// `config.json` + `model.safetensors` for `transformers` (LlamaForCausalLM = head 0; the extra heads
    /// in `wmtp_extra_heads.safetensors`).
    Hf,
}

/// The checkpoint's trained model (adapter not merged) and value head, on the CPU, and its base model id.
fn trained(ckpt: &Path) -> Result<(Transformer, Option<ValueHead>, String)> {
    let (cfg, _) = read_meta(ckpt, &[])?;
    let opts = crate::train::session::load_options(&cfg, &candle_core::Device::Cpu)?;
    let (model, vh) = load_trained(ckpt, &cfg.model.path, &opts, &cfg.value_head)
        .with_context(|| format!("checkpoint {}", ckpt.display()))?;
    Ok((model, vh, cfg.model.path))
}

/// Writes the checkpoint's model with its LoRA adapter merged (or its full weights) to `out` in
/// `format` (with `value_head.safetensors` when the run had one), and the base model's tokenizer
/// (`tokenizer.json`, `tokenizer_config.json` with its chat template); both load with `--model out`.
pub fn merge_checkpoint(ckpt: &Path, out: &Path, format: MergeFormat) -> Result<()> {
    let (model, vh, base) = trained(ckpt)?;
    match format {
        MergeFormat::Meta => save_full(out, &model, vh.as_ref())?,
        MergeFormat::Hf => save_hf_merged(out, &model, vh.as_ref())?,
    }
    // the base model's tokenizer beside the weights: a complete model folder
    match crate::formats::load::load_tokenizer(&base)
        .with_context(|| format!("the tokenizer of base model `{base}`"))?
    {
        Some(tok) if tok.has_json_form() => tok
            .save_hf_files(out, model.args.max_seq_len)
            .with_context(|| format!("writing the tokenizer into {}", out.display())),
        _ => Ok(()), // a preset's byte tokenizer (or a SentencePiece model): nothing to write
    }
}

/// Writes the checkpoint's LoRA adapter to `out` as a PEFT adapter (HF module names, rotate-half q/k);
/// `base_model_name_or_path` is the base model's absolute path (a preset keeps its name).
pub fn export_peft_adapter(ckpt: &Path, out: &Path) -> Result<()> {
    let (model, vh, base) = trained(ckpt)?;
    if model.lora.is_none() {
        bail!(
            "checkpoint {}: a full fine-tuning run has no adapter (use `wmtp merge --format hf`)",
            ckpt.display()
        );
    }
    // a path in the run's config is relative to where the run started: PEFT needs one it can open
    let base = std::fs::canonicalize(&base)
        .map(|p| p.display().to_string())
        .unwrap_or(base);
    export_peft(out, &model, vh.as_ref(), &base)
}
