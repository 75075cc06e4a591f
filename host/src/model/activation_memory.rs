//! Activation memory of a training step per rank (what [`super::memory::MemoryEstimate`] leaves out),
//! from the shapes the block-wise engine keeps. N = batch × sequence tokens per rank, D the width,
//! K the key/value width, F the FFN width, d the bytes of the run dtype:
//!
//! - a block's activations for its backward (input, output, norm outputs, q, attention output,
//!   residual, k and v, the three FFN tensors, and the attention's log-sum-exp in f32):
//!   A = N·(7D + 2K + 3F)·d + N·heads·4;
//! - `runtime.activation_checkpointing = "blocks"`: the trunk blocks' inputs (n_trunk + 1)·N·D·d, and
//!   one block's A while it is recomputed; `"none"`: A for every block (trunk and heads), and every
//!   head's logits with its gathered and normed rows, H·N·(V + 2D)·d (the backward reads them instead of
//!   projecting again); `"selective"`: every block's A without its two norm outputs and SwiGLU product,
//!   A_s = N·(5D + 2K + 2F)·d + N·heads·4, and no logits (recomputed chunk by chunk); with
//!   `runtime.selective_blocks = s` below all blocks, only the first s blocks (trunk from the bottom, then
//!   the heads) keep A_s, the others as with "blocks": r inputs N·D·d (r: the trunk blocks recomputed,
//!   plus h_trunk) and one block's A while one is recomputed;
//! - working memory: one block's A again for the gradients flowing through it, the f32 gradient of the
//!   trunk output N·D·4, the attention backward's f32 dQ accumulator N·D·4, a vocabulary chunk of `chunk_rows` rows (bf16 logits, f32 probabilities and
//!   gradient: chunk_rows·V·10 bytes), and the CUDA context and libraries (0.5 GiB).
//!
//! Checked against the peaks of `bench/gpu/run.py` on an H200 and an H100 (nvidia-smi above idle) in the
//! tests below.

use super::args::ModelArgs;
use serde::{Deserialize, Serialize};

/// `runtime.activation_checkpointing`: what a training forward keeps for its backward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActivationCheckpointing {
    /// "selective" where the run's estimated peak with it fits the GPU, else "blocks" (always "blocks"
    /// on the CPU); a session resolves it once at start-up (`train::auto_checkpointing`).
    #[default]
    Auto,
    /// Recompute each block in the backward from its saved input.
    Blocks,
    /// Keep every block's activations.
    None,
    /// Keep the matrix products' and attention's outputs; recompute the norms, SwiGLU and logits.
    Selective,
}

impl ActivationCheckpointing {
    /// The config spellings, for messages.
    pub const NAMES: &'static str = "auto, blocks, selective or none";

    /// The config spelling of the mode.
    pub fn name(self) -> &'static str {
        match self {
            ActivationCheckpointing::Auto => "auto",
            ActivationCheckpointing::Blocks => "blocks",
            ActivationCheckpointing::None => "none",
            ActivationCheckpointing::Selective => "selective",
        }
    }

    /// Parses a config spelling (`auto`, `blocks`, `none`, `selective`) as the config file's deserializer
    /// does.
    pub fn parse(s: &str) -> Option<Self> {
        use serde::de::IntoDeserializer;
        let d: serde::de::value::StrDeserializer<'_, serde::de::value::Error> =
            s.into_deserializer();
        Self::deserialize(d).ok()
    }
}

/// The blocks whose activations `runtime.activation_checkpointing` decides on: the trunk's and the
/// heads' (one each), numbered trunk first from the bottom — the order `runtime.selective_blocks` counts.
pub fn checkpointed_blocks(args: &ModelArgs) -> usize {
    args.n_trunk() + args.n_future_tokens
}

/// The name a run's header and `wmtp info` give `mode`: "selective on s of n blocks" when
/// `selective_blocks` covers fewer than all `n` blocks, else the mode's name.
pub fn describe_mode(
    mode: ActivationCheckpointing,
    selective_blocks: Option<usize>,
    n: usize,
) -> String {
    match (mode, selective_blocks) {
        (ActivationCheckpointing::Selective, Some(s)) if s < n => {
            format!("selective on {s} of {n} blocks")
        }
        _ => mode.name().to_string(),
    }
}

/// Checks a `selective_blocks` count against the model's blocks: the error says how many it has.
pub fn check_selective_blocks(
    args: &ModelArgs,
    selective_blocks: Option<usize>,
) -> anyhow::Result<()> {
    match selective_blocks {
        Some(s) if s > checkpointed_blocks(args) => anyhow::bail!(
            "{s}: the model has {} blocks ({} in the trunk, {} heads)",
            checkpointed_blocks(args),
            args.n_trunk(),
            args.n_future_tokens
        ),
        _ => Ok(()),
    }
}

/// Bytes of the CUDA context, cuBLAS workspace and allocator slack, measured as a constant.
pub const CONTEXT_BYTES: f64 = 0.5 * (1u64 << 30) as f64;

/// Activation bytes per rank.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActivationEstimate {
    /// Kept from the forward to the backward.
    pub saved: f64,
    /// Working memory of the backward, the vocabulary chunk and the CUDA context.
    pub working: f64,
}

impl ActivationEstimate {
    /// For `batch` × `seq` tokens on this rank, weights of `dtype_bytes`, activations kept as `mode`
    /// says, vocabulary chunks of `chunk_rows` rows. `Auto` is estimated as "blocks", its fallback
    /// (resolve it first to estimate what a run will do).
    pub fn new(
        args: &ModelArgs,
        batch: usize,
        seq: usize,
        dtype_bytes: usize,
        mode: ActivationCheckpointing,
        chunk_rows: usize,
    ) -> Self {
        Self::with_selective_blocks(args, batch, seq, dtype_bytes, mode, None, chunk_rows)
    }

    /// As [`ActivationEstimate::new`], with "selective" on only the first `selective_blocks` of the
    /// [`checkpointed_blocks`] (None: all; ignored by the other modes).
    pub fn with_selective_blocks(
        args: &ModelArgs,
        batch: usize,
        seq: usize,
        dtype_bytes: usize,
        mode: ActivationCheckpointing,
        selective_blocks: Option<usize>,
        chunk_rows: usize,
    ) -> Self {
        let n = (batch * seq) as f64;
        let (dm, d) = (args.dim as f64, dtype_bytes as f64);
        let k = (args.kv_heads() * args.head_dim()) as f64;
        let f = args.hidden_dim() as f64;
        let block = n * (7.0 * dm + 2.0 * k + 3.0 * f) * d + n * args.n_heads as f64 * 4.0;
        let n_trunk = args.n_trunk() as f64;
        let blocks = n_trunk + args.n_future_tokens as f64;
        let selective = n * (5.0 * dm + 2.0 * k + 2.0 * f) * d + n * args.n_heads as f64 * 4.0;
        let saved = match mode {
            ActivationCheckpointing::Blocks | ActivationCheckpointing::Auto => {
                (n_trunk + 1.0) * n * dm * d + block
            }
            ActivationCheckpointing::None => {
                blocks * block
                    + args.n_future_tokens as f64 * n * (args.vocab_size as f64 + 2.0 * dm) * d
            }
            ActivationCheckpointing::Selective => {
                let all = checkpointed_blocks(args);
                let s = selective_blocks.unwrap_or(all).min(all);
                if s == all {
                    blocks * selective
                } else {
                    let recomputed_trunk = args.n_trunk().saturating_sub(s) as f64;
                    (recomputed_trunk + 1.0) * n * dm * d + s as f64 * selective + block
                }
            }
        };
        let chunk = chunk_rows.min(batch * seq) as f64 * args.vocab_size as f64 * 10.0;
        ActivationEstimate {
            saved,
            working: block + 2.0 * n * dm * 4.0 + chunk + CONTEXT_BYTES,
        }
    }

    /// Sum of the parts.
    pub fn total(&self) -> f64 {
        self.saved + self.working
    }
}

#[cfg(test)]
mod tests {
    use super::super::memory::{Counts, MemoryEstimate};
    use super::*;

    const GIB: f64 = (1u64 << 30) as f64;

    /// Weights, optimiser state and activations of one GPU, GiB.
    fn predicted(preset: &str, batch: usize, lora: bool, mode: ActivationCheckpointing) -> f64 {
        let a = ModelArgs::preset(preset).expect("preset");
        let c = a.param_counts();
        // LoRA r=8 on wq wk wv wo: r·(in + out) = 16·dim per matrix, 4 matrices per block
        let lt = (a.n_trunk() + a.n_future_tokens) as u64 * 4 * 16 * a.dim as u64;
        let (total, trainable) = if lora {
            (c.total() + lt, lt)
        } else {
            (c.total(), c.total())
        };
        let state = MemoryEstimate::new(
            Counts {
                total,
                trainable,
                ..Default::default()
            },
            2,
            1,
        );
        (state.total() + ActivationEstimate::new(&a, batch, 2048, 2, mode, 2048).total()) / GIB
    }

    #[test]
    fn the_estimate_matches_the_peaks_measured_on_the_gpu() {
        use ActivationCheckpointing::{Blocks, None, Selective};
        // bench/gpu/run.py, bf16, seq 2048 (README, section GPU): nvidia-smi peak above idle; blocks and
        // none on one H200 (2026-11-30), selective on one H100 (2026-12-07, where blocks and none
        // measured the same to 0.1 GiB)
        let measured = [
            ("1b_mtp", 8, true, Blocks, 7.2),
            ("1b_mtp", 8, true, None, 32.0),
            ("1b_mtp", 8, true, Selective, 21.7),
            ("1b_mtp", 8, false, Blocks, 28.3),
            ("1b_mtp", 8, false, None, 53.1),
            ("1b_mtp", 8, false, Selective, 43.3),
            ("7b_1t_4", 1, true, Blocks, 15.4),
            ("7b_1t_4", 1, true, None, 22.9),
            ("7b_1t_4", 1, true, Selective, 20.4),
            ("7b_1t_4", 4, true, Blocks, 18.3),
            ("7b_1t_4", 4, true, None, 50.0),
            ("7b_1t_4", 4, true, Selective, 39.3),
        ];
        for (preset, batch, lora, mode, gib) in measured {
            let p = predicted(preset, batch, lora, mode);
            let err = (p - gib) / gib;
            eprintln!(
                "{preset} b{batch} {} {mode:?}: predicted {p:.1} GiB, measured {gib} ({:+.1}%)",
                if lora { "LoRA" } else { "full" },
                100.0 * err
            );
            assert!(
                err.abs() < 0.12,
                "{preset} b{batch} lora {lora} {mode:?}: predicted {p:.1} GiB, measured {gib}"
            );
        }
    }

    /// "selective" keeps less than "none" and more than "blocks", and its kept part is the formula's
    /// N·(5D + 2K + 2F)·d + N·heads·4 per block.
    #[test]
    fn selective_sits_between_blocks_and_none() {
        let a = ModelArgs::preset("1b_mtp").expect("preset");
        let est = |m| ActivationEstimate::new(&a, 8, 2048, 2, m, 2048);
        let (b, s, n) = (
            est(ActivationCheckpointing::Blocks),
            est(ActivationCheckpointing::Selective),
            est(ActivationCheckpointing::None),
        );
        assert!(b.saved < s.saved && s.saved < n.saved);
        let tokens = 8.0 * 2048.0;
        let (dm, f) = (a.dim as f64, a.hidden_dim() as f64);
        let per_block = tokens * (5.0 * dm + 2.0 * dm + 2.0 * f) * 2.0 + tokens * 16.0 * 4.0;
        assert_eq!(s.saved, 22.0 * per_block);
        assert_eq!(s.working, n.working);
        for (name, want) in [
            ("blocks", ActivationCheckpointing::Blocks),
            ("none", ActivationCheckpointing::None),
            ("selective", ActivationCheckpointing::Selective),
        ] {
            assert_eq!(ActivationCheckpointing::parse(name), Some(want));
        }
        assert_eq!(ActivationCheckpointing::parse("all"), None);
    }

    /// "selective" on the first s blocks: s = 0 is "blocks", s = all is "selective", and every block
    /// moved from recomputed to selective adds its selective set less its input (trunk) — the saved
    /// bytes grow strictly with s below all, so "auto" can take the largest s that fits. (At s = all
    /// nothing is recomputed any more: the one block's A of the recomputation goes, and the total drops.)
    #[test]
    fn selective_on_some_blocks_runs_from_blocks_to_selective() {
        let a = ModelArgs::preset("1b_mtp").expect("preset");
        let all = checkpointed_blocks(&a);
        assert_eq!(all, 22);
        let est = |s| {
            ActivationEstimate::with_selective_blocks(
                &a,
                8,
                2048,
                2,
                ActivationCheckpointing::Selective,
                s,
                2048,
            )
        };
        let blocks = ActivationEstimate::new(&a, 8, 2048, 2, ActivationCheckpointing::Blocks, 2048);
        let selective =
            ActivationEstimate::new(&a, 8, 2048, 2, ActivationCheckpointing::Selective, 2048);
        assert_eq!(est(Some(0)).saved, blocks.saved);
        assert_eq!(est(Some(all)).saved, selective.saved);
        assert_eq!(est(None).saved, selective.saved);
        let tokens = 8.0 * 2048.0;
        let (dm, f) = (a.dim as f64, a.hidden_dim() as f64);
        let sel = tokens * (7.0 * dm + 2.0 * f) * 2.0 + tokens * 16.0 * 4.0;
        let input = tokens * dm * 2.0;
        assert_eq!(est(Some(5)).saved - est(Some(4)).saved, sel - input);
        for s in 0..all - 1 {
            assert!(est(Some(s)).saved < est(Some(s + 1)).saved, "s = {s}");
        }
    }
}
