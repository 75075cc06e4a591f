//! What wmtp's Hugging Face folders share between reading (hf.rs) and writing (hf_export.rs): the files
//! beside transformers' own (the extra MTP heads, wmtp's config) and the q/k row order of RoPE — wmtp
//! keeps q/k rows interleaved per head ([heads, hd/2, 2]), HF groups them rotate-half ([heads, 2, hd/2]).

use anyhow::Result;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// Extra heads' weights or LoRA, under wmtp's names.
pub const EXTRA_HEADS_FILE: &str = "wmtp_extra_heads.safetensors";
/// wmtp's own fields of an HF / PEFT export.
pub const WMTP_CONFIG_FILE: &str = "wmtp_config.json";

/// `wmtp_config.json`: what an HF / PEFT export needs to come back as the same MTP model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WmtpExportConfig {
    /// Heads of the model (1 + extra heads).
    pub n_future_tokens: usize,
    /// The value head saved in `value_head.safetensors`, if any.
    pub value_head: Option<crate::model::ValueHeadConfig>,
}

/// Interleaved → rotate-half rows (HF's `permute`): rows [heads, hd/2, 2] regrouped as [heads, 2, hd/2].
/// The inverse of [`unpermute_rotate_half`].
pub fn permute_rotate_half(w: &Tensor, n_heads: usize) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    let hd = rows / n_heads;
    Ok(w.reshape((n_heads, hd / 2, 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))?)
}

/// Inverse of HF's `permute`: rows grouped [heads, 2, hd/2] (rotate-half) → [heads, hd/2, 2] (interleaved).
pub fn unpermute_rotate_half(w: &Tensor, n_heads: usize) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    let hd = rows / n_heads;
    Ok(w.reshape((n_heads, 2, hd / 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))?)
}
