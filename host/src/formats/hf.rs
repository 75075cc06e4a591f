//! HF-LLaMA checkpoints (`config.json` + safetensors with `model.layers.{i}.self_attn.q_proj.weight` …):
//! keys renamed to Meta's, and q/k rows converted from the rotate-half RoPE layout to the interleaved one
//! on load (never at run time).

use super::hf_layout::unpermute_rotate_half;
use super::meta::{files_matching, read_safetensors};
use crate::formats::hf_names::meta_name;
use crate::model::ModelArgs;
use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;

/// The `config.json` keys wmtp reads (others are ignored: HF configs carry many unrelated fields).
#[derive(Debug, Deserialize)]
struct HfConfig {
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    vocab_size: usize,
    #[serde(default = "eps")]
    rms_norm_eps: f64,
    #[serde(default = "theta")]
    rope_theta: f64,
    #[serde(default = "max_pos")]
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    model_type: Option<String>,
}
fn eps() -> f64 {
    1e-6
}
fn theta() -> f64 {
    1e4
}
fn max_pos() -> usize {
    2048
}

/// `dir/config.json` (an HF LLaMA or Mistral config) and the model arguments it gives (H = 1).
fn read_hf_config(dir: &Path) -> Result<(HfConfig, ModelArgs)> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path)
        .with_context(|| format!("reading {}", cfg_path.display()))?;
    let cfg: HfConfig =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", cfg_path.display()))?;
    if let Some(t) = &cfg.model_type {
        if t != "llama" && t != "mistral" {
            bail!(
                "{}: model_type `{t}` is not a LLaMA-architecture model",
                cfg_path.display()
            );
        }
    }
    let args = ModelArgs {
        dim: cfg.hidden_size,
        n_layers: cfg.num_hidden_layers,
        n_heads: cfg.num_attention_heads,
        n_kv_heads: cfg.num_key_value_heads,
        vocab_size: cfg.vocab_size,
        multiple_of: 256,
        ffn_dim_multiplier: None,
        ffn_hidden_dim: Some(cfg.intermediate_size),
        norm_eps: cfg.rms_norm_eps,
        rope_theta: cfg.rope_theta,
        max_seq_len: cfg.max_position_embeddings,
        n_future_tokens: 1,
    };
    args.validate()
        .with_context(|| format!("unsupported shape in {}", cfg_path.display()))?;
    Ok((cfg, args))
}

/// Reads an HF-LLaMA directory into Meta names and layout (an H = 1 model).
pub fn read_hf_dir(dir: &Path) -> Result<(ModelArgs, HashMap<String, Tensor>)> {
    let (cfg, args) = read_hf_config(dir)?;
    let files = files_matching(dir, |n| n.ends_with(".safetensors"))?;
    if files.is_empty() {
        bail!(
            "{}: no *.safetensors weights next to config.json",
            dir.display()
        );
    }
    let mut out = HashMap::new();
    let wmtp_files = [
        crate::formats::hf_layout::EXTRA_HEADS_FILE,
        "value_head.safetensors",
    ];
    for f in &files {
        if f.file_name()
            .is_some_and(|n| wmtp_files.iter().any(|w| n == *w))
        {
            continue;
        }
        for (k, t) in read_safetensors(f)? {
            if let Some(name) = meta_name(&k) {
                let t = if name.ends_with("attention.wq.weight") {
                    unpermute_rotate_half(&t, args.n_heads)?
                } else if name.ends_with("attention.wk.weight") {
                    unpermute_rotate_half(&t, args.kv_heads())?
                } else {
                    t
                };
                out.insert(name, t);
            }
        }
    }
    if cfg.tie_word_embeddings && !out.contains_key("output.weight") {
        if let Some(e) = out.get("tok_embeddings.weight") {
            out.insert("output.weight".into(), e.copy()?);
        }
    }
    // a wmtp HF export: its extra MTP heads beside the Llama (wmtp names and layout)
    let wmtp_cfg = dir.join(crate::formats::hf_layout::WMTP_CONFIG_FILE);
    let extra = dir.join(crate::formats::hf_layout::EXTRA_HEADS_FILE);
    let mut args = args;
    if wmtp_cfg.exists() && extra.exists() {
        let text = std::fs::read_to_string(&wmtp_cfg)
            .with_context(|| format!("reading {}", wmtp_cfg.display()))?;
        let w: crate::formats::hf_layout::WmtpExportConfig = serde_json::from_str(&text)
            .with_context(|| format!("parsing {}", wmtp_cfg.display()))?;
        if w.n_future_tokens > 1 {
            args.n_future_tokens = w.n_future_tokens;
            args.n_layers += w.n_future_tokens - 1;
            out.extend(read_safetensors(&extra)?);
        }
    }
    Ok((args, out))
}
