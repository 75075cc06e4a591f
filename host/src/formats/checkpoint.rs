//! A wmtp checkpoint folder read as a model format (its file names: [`super::checkpoint_layout`]): its
//! trainer state, and its trained model — its adapter on the base model, or its full model folder — for
//! training tools (`wmtp merge`/`export`, a frozen critic) and for inference (`wmtp generate`,
//! HumanEval). Writing one, and restoring a training session from one, is `host/src/checkpoint/`.

use super::checkpoint_layout as layout;
use crate::formats::adapter::{load_adapter, read_value_head};
use crate::model::ValueHeadConfig;
use crate::model::{Transformer, ValueHead};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Version of the checkpoint layout.
pub const CHECKPOINT_FORMAT: u32 = 1;

/// `trainer_state.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    /// Layout version.
    pub format: u32,
    /// Optimizer steps done.
    pub step: u64,
    /// Data position: epoch of the next batch.
    pub epoch: u64,
    /// Data position: index of the next batch's first item.
    pub index: usize,
    /// Best validation loss so far.
    pub best_val: Option<f64>,
    /// The pipeline plugin the run used: an absolute path (checkpoints written before paths were made
    /// absolute, still format 1, may hold a relative one).
    pub pipeline: String,
    /// SHA-256 (hex) of the plugin's bytes; empty in checkpoints written before it was recorded.
    #[serde(default)]
    pub pipeline_sha256: String,
}

/// A checkpoint's `trainer_state.json`, refused when its format is newer than this wmtp reads.
pub fn read_trainer_state(ckpt: &Path) -> Result<TrainerState> {
    let p = ckpt.join(layout::TRAINER_STATE);
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    let st: TrainerState =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))?;
    if st.format > CHECKPOINT_FORMAT {
        bail!(
            "{}: checkpoint format {} is newer than this wmtp reads",
            p.display(),
            st.format
        );
    }
    Ok(st)
}

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
