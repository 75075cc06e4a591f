//! A checkpoint's trained model: its adapter on the base model, or its full model folder, for training
//! tools (`wmtp merge`/`export`, a frozen critic) and for inference (`wmtp generate`, HumanEval).

use super::layout;
use crate::formats::adapter::{load_adapter, read_value_head};
use crate::model::ValueHeadConfig;
use crate::model::{Transformer, ValueHead};
use anyhow::Result;
use std::path::Path;

/// A trained checkpoint's model and value head: its `adapter/` added to base model `base` (LoRA not
/// merged), or its full `model/` directory (with `value_head.safetensors` when there is one, built as
/// `value_head`); loaded with `opts` (the checkpoint's own head count for full models).
pub fn load_trained(
    ckpt: &Path,
    base: &str,
    opts: &crate::formats::load::LoadOptions,
    value_head: &ValueHeadConfig,
) -> Result<(Transformer, Option<ValueHead>)> {
    let adapter = ckpt.join(layout::ADAPTER);
    if adapter.exists() {
        let mut model = crate::formats::load::load_model(base, opts)?.model;
        let vh = load_adapter(&adapter, &mut model)?;
        return Ok((model, vh));
    }
    load_full_trained(ckpt, opts, value_head)
}

/// A trained checkpoint's model for inference (`wmtp generate`, `eval --humaneval`): as [`load_trained`],
/// LoRA merged into the weights, with the base model's tokenizer (the byte tokenizer for presets, as in
/// training); `source` names the checkpoint.
pub fn load_trained_for_inference(
    ckpt: &Path,
    base: &str,
    opts: &crate::formats::load::LoadOptions,
) -> Result<crate::formats::load::LoadedModel> {
    let mut lm = if ckpt.join(layout::ADAPTER).exists() {
        let mut lm = crate::formats::load::load_model(base, opts)?;
        load_adapter(&ckpt.join(layout::ADAPTER), &mut lm.model)?;
        lm
    } else {
        let model = load_full_trained(ckpt, opts, &ValueHeadConfig::default())?.0;
        // a full model directory has no tokenizer of its own: the base model's
        let tokenizer = crate::formats::load::load_model(base, opts)?.tokenizer;
        crate::formats::load::LoadedModel {
            model,
            tokenizer,
            source: String::new(),
        }
    };
    lm.model.set_lora_merged(true)?;
    lm.source = ckpt.display().to_string();
    // a preset base trains with the byte tokenizer (as `Session` does)
    lm.tokenizer
        .get_or_insert_with(crate::data::tokenizer::Tokenizer::bytes);
    Ok(lm)
}

/// The full `model/` directory of a checkpoint (and its value head when saved).
fn load_full_trained(
    ckpt: &Path,
    opts: &crate::formats::load::LoadOptions,
    value_head: &ValueHeadConfig,
) -> Result<(Transformer, Option<ValueHead>)> {
    let dir = ckpt.join(layout::MODEL);
    let full = crate::formats::load::LoadOptions {
        n_future_tokens: None,
        ..opts.clone()
    };
    let model = crate::formats::load::load_model(&dir.to_string_lossy(), &full)?.model;
    let f = dir.join("value_head.safetensors");
    if !f.exists() {
        return Ok((model, None));
    }
    let vh = read_value_head(&f, value_head, &model)?;
    Ok((model, Some(vh)))
}
