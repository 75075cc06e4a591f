//! `ModelArgs`: the shape of a Meta-layout multi-token-prediction Transformer (design.md §1), its presets,
//! and parameter counts computed from the shape alone (nothing allocated).

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Architecture hyper-parameters, as in Meta's `params.json` (unknown keys are rejected).
///
/// `n_layers` counts every Transformer block, the head blocks included: the trunk has
/// `n_layers − n_future_tokens` blocks and each of the `n_future_tokens` heads is one more block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelArgs {
    /// Model width D.
    pub dim: usize,
    /// Total number of Transformer blocks (trunk + heads).
    pub n_layers: usize,
    /// Attention heads.
    pub n_heads: usize,
    /// Key/value heads for grouped-query attention (defaults to `n_heads`).
    #[serde(default)]
    pub n_kv_heads: Option<usize>,
    /// Vocabulary size V.
    pub vocab_size: usize,
    /// The feed-forward width is rounded up to a multiple of this.
    #[serde(default = "default_multiple_of")]
    pub multiple_of: usize,
    /// Optional multiplier on the feed-forward width.
    #[serde(default)]
    pub ffn_dim_multiplier: Option<f64>,
    /// Explicit feed-forward width (HF / GGUF models state it); overrides the Meta formula when set.
    #[serde(default)]
    pub ffn_hidden_dim: Option<usize>,
    /// RMSNorm epsilon.
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    /// RoPE base θ.
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// Longest sequence the model is used with.
    #[serde(default = "default_max_seq_len")]
    pub max_seq_len: usize,
    /// Number of prediction heads H (1 = a plain next-token model).
    #[serde(default = "default_n_future_tokens")]
    pub n_future_tokens: usize,
}

fn default_multiple_of() -> usize {
    256
}
fn default_norm_eps() -> f64 {
    1e-5
}
fn default_rope_theta() -> f64 {
    1e4
}
fn default_max_seq_len() -> usize {
    2048
}
fn default_n_future_tokens() -> usize {
    1
}

/// Parameter counts of a model, by part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ParamCounts {
    /// Token embedding.
    pub embedding: u64,
    /// All trunk blocks.
    pub trunk: u64,
    /// All head blocks (head 0 and the extra heads).
    pub heads: u64,
    /// Shared final norm and output projection.
    pub norm_and_output: u64,
}

impl ParamCounts {
    /// Sum of all parts.
    pub fn total(&self) -> u64 {
        self.embedding + self.trunk + self.heads + self.norm_and_output
    }
}

impl ModelArgs {
    /// Reads and validates a Meta `params.json`; errors name the file and the bad key.
    pub fn from_params_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading model params {}", path.display()))?;
        let args: ModelArgs = serde_json::from_str(&text)
            .with_context(|| format!("parsing model params {}", path.display()))?;
        args.validate()
            .with_context(|| format!("invalid model params in {}", path.display()))?;
        Ok(args)
    }

    /// The built-in shapes, by name: `tiny` (tests and the default job), `7b_1t_4` (Meta's 7B MTP model,
    /// 28 trunk blocks + 4 heads), `1b_mtp` (dim 2048, 18 trunk + 4 heads), `smollm2-135m` (its shape, H = 1).
    pub fn preset(name: &str) -> Option<Self> {
        let base = ModelArgs {
            dim: 0,
            n_layers: 0,
            n_heads: 0,
            n_kv_heads: None,
            vocab_size: 32000,
            multiple_of: 256,
            ffn_dim_multiplier: None,
            ffn_hidden_dim: None,
            norm_eps: 1e-5,
            rope_theta: 1e4,
            max_seq_len: 2048,
            n_future_tokens: 4,
        };
        let args = match name {
            "tiny" => ModelArgs {
                dim: 64,
                n_layers: 4,
                n_heads: 4,
                n_kv_heads: Some(2),
                vocab_size: 512,
                multiple_of: 32,
                max_seq_len: 256,
                n_future_tokens: 2,
                ..base
            },
            "7b_1t_4" => ModelArgs {
                dim: 4096,
                n_layers: 32,
                n_heads: 32,
                ..base
            },
            "1b_mtp" => ModelArgs {
                dim: 2048,
                n_layers: 22,
                n_heads: 16,
                ..base
            },
            "smollm2-135m" => ModelArgs {
                dim: 576,
                n_layers: 30,
                n_heads: 9,
                n_kv_heads: Some(3),
                vocab_size: 49152,
                ffn_hidden_dim: Some(1536),
                rope_theta: 1e5,
                max_seq_len: 8192,
                n_future_tokens: 1,
                ..base
            },
            _ => return None,
        };
        Some(args)
    }

    /// Names accepted by [`ModelArgs::preset`].
    pub const PRESETS: [&'static str; 4] = ["tiny", "7b_1t_4", "1b_mtp", "smollm2-135m"];

    /// Checks the shape is buildable; the error names the offending key.
    pub fn validate(&self) -> Result<()> {
        if self.dim == 0 || self.n_heads == 0 || self.vocab_size == 0 {
            bail!("`dim`, `n_heads` and `vocab_size` must be positive");
        }
        if !self.dim.is_multiple_of(self.n_heads) {
            bail!(
                "`dim` ({}) must be divisible by `n_heads` ({})",
                self.dim,
                self.n_heads
            );
        }
        if !self.head_dim().is_multiple_of(2) {
            bail!(
                "head_dim = dim / n_heads = {} must be even for RoPE",
                self.head_dim()
            );
        }
        let kv = self.kv_heads();
        if kv == 0 || !self.n_heads.is_multiple_of(kv) {
            bail!(
                "`n_kv_heads` ({kv}) must divide `n_heads` ({})",
                self.n_heads
            );
        }
        if self.n_future_tokens == 0 {
            bail!("`n_future_tokens` must be at least 1");
        }
        if self.n_layers < self.n_future_tokens {
            bail!(
                "`n_layers` ({}) counts the head blocks, so it must be ≥ `n_future_tokens` ({})",
                self.n_layers,
                self.n_future_tokens
            );
        }
        if self.multiple_of == 0 {
            bail!("`multiple_of` must be positive");
        }
        if !(self.norm_eps > 0.0 && self.rope_theta > 0.0) {
            bail!("`norm_eps` and `rope_theta` must be positive");
        }
        Ok(())
    }

    /// Per-head width: dim / n_heads.
    pub fn head_dim(&self) -> usize {
        self.dim / self.n_heads
    }

    /// Number of key/value heads (GQA), `n_heads` when unset.
    pub fn kv_heads(&self) -> usize {
        self.n_kv_heads.unwrap_or(self.n_heads)
    }

    /// Number of trunk blocks: n_layers − H.
    pub fn n_trunk(&self) -> usize {
        self.n_layers - self.n_future_tokens
    }

    /// Feed-forward width: `ffn_hidden_dim` when given, else
    /// multiple_of · ⌈int(int(2·4·dim/3) · ffn_dim_multiplier?) / multiple_of⌉ (11008 for dim 4096).
    pub fn hidden_dim(&self) -> usize {
        if let Some(h) = self.ffn_hidden_dim {
            return h;
        }
        let mut h = (2 * 4 * self.dim) / 3;
        if let Some(m) = self.ffn_dim_multiplier {
            h = (m * h as f64) as usize;
        }
        self.multiple_of * h.div_ceil(self.multiple_of)
    }

    /// Parameters of one Transformer block: 4 attention projections, 3 feed-forward ones, 2 norms.
    pub fn block_params(&self) -> u64 {
        let d = self.dim as u64;
        let kv = (self.kv_heads() * self.head_dim()) as u64;
        let f = self.hidden_dim() as u64;
        2 * d * d + 2 * kv * d + 3 * d * f + 2 * d
    }

    /// Parameter counts by part, from the shape alone.
    pub fn param_counts(&self) -> ParamCounts {
        let d = self.dim as u64;
        let v = self.vocab_size as u64;
        ParamCounts {
            embedding: v * d,
            trunk: self.n_trunk() as u64 * self.block_params(),
            heads: self.n_future_tokens as u64 * self.block_params(),
            norm_and_output: d + v * d,
        }
    }

    /// (in, out) features of a block's linear layer by its target name (wq wk wv wo w1 w2 w3).
    pub fn linear_shape(&self, target: &str) -> Option<(usize, usize)> {
        let d = self.dim;
        let kv = self.kv_heads() * self.head_dim();
        let f = self.hidden_dim();
        Some(match target {
            "wq" | "wo" => (d, d),
            "wk" | "wv" => (d, kv),
            "w1" | "w3" => (d, f),
            "w2" => (f, d),
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_7b_shape_counts() {
        let a = ModelArgs::preset("7b_1t_4").unwrap();
        assert_eq!(a.hidden_dim(), 11008);
        assert_eq!(a.n_trunk(), 28);
        let c = a.param_counts();
        // 32 blocks of 202,383,360 + embedding and output 2·131,072,000 + norm 4096
        assert_eq!(a.block_params(), 202_383_360);
        assert_eq!(c.total(), 32 * 202_383_360 + 2 * 131_072_000 + 4096);
        assert!((6.7e9..6.8e9).contains(&(c.total() as f64)));
    }

    #[test]
    fn rejects_bad_shapes_by_key() {
        let mut a = ModelArgs::preset("tiny").unwrap();
        a.n_kv_heads = Some(3);
        assert!(a.validate().unwrap_err().to_string().contains("n_kv_heads"));
        let mut a = ModelArgs::preset("tiny").unwrap();
        a.n_layers = 1;
        assert!(a.validate().unwrap_err().to_string().contains("n_layers"));
    }

    #[test]
    fn params_json_unknown_key_is_error() {
        let dir = std::env::temp_dir().join(format!("wmtp-args-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("params.json");
        std::fs::write(
            &p,
            r#"{"dim": 64, "n_layers": 2, "n_heads": 4, "vocab_size": 10, "dimm": 3}"#,
        )
        .unwrap();
        let err = format!("{:#}", ModelArgs::from_params_json(&p).unwrap_err());
        assert!(err.contains("params.json") && err.contains("dimm"), "{err}");
    }
}
