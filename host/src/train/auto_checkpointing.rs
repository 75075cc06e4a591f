//! `runtime.activation_checkpointing = "auto"` (the default), resolved once when a session starts:
//! "selective" (faster: 1.07–1.21× PyTorch eager on bench/gpu's rows, against 0.81–0.93× for "blocks")
//! where the run's estimated peak per rank with it is at most [`AUTO_MEMORY_SHARE`] of the GPU's memory;
//! else "selective" on as many blocks as fit that share (`runtime.selective_blocks`: the others are
//! recomputed whole), and "blocks" (the least memory) when not even one does; "blocks" on the CPU. The
//! estimate is `wmtp info`'s: weights, masters, gradients and AdamW state ([`MemoryEstimate`]) of the
//! policy's parameter counts over the run's ranks, the frozen reference and critic weights, and the
//! activations of `training.batch_size` × `data.max_length` tokens ([`ActivationEstimate`]).

use super::config::RunConfig;
use crate::model::activation_memory::{
    check_selective_blocks, checkpointed_blocks, describe_mode, ActivationCheckpointing,
    ActivationEstimate,
};
use crate::model::args::ModelArgs;
use crate::model::memory::{human_bytes, Counts, MemoryEstimate};
use crate::model::Transformer;
use anyhow::{Context, Result};

/// The share of the GPU's memory the estimated peak with "selective" may take for "auto" to pick it:
/// the estimate is within 6% of the peaks bench/gpu measured; the rest is margin.
pub const AUTO_MEMORY_SHARE: f64 = 0.9;

/// The mode a session trains with and a line saying why (the start-up summary prints it).
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointingChoice {
    /// "blocks", "selective" or "none" (never "auto").
    pub mode: ActivationCheckpointing,
    /// With "selective": how many blocks keep the selective set (None: all of them).
    pub selective_blocks: Option<usize>,
    /// Why: "as configured", or auto's estimate against the device's memory.
    pub reason: String,
}

impl CheckpointingChoice {
    /// The mode as the summary shows it ([`describe_mode`] of a model with `n_blocks` blocks).
    pub fn describe(&self, n_blocks: usize) -> String {
        describe_mode(self.mode, self.selective_blocks, n_blocks)
    }
}

/// The choice for `asked` (with `selective_blocks` as configured), given `peak(s)`: the estimated peak
/// bytes per rank with "selective" on the first s of `n_blocks` blocks, and the GPU's memory in bytes
/// (None: the CPU). "auto" takes the largest s whose peak fits [`AUTO_MEMORY_SHARE`] of the GPU.
pub fn choose(
    asked: ActivationCheckpointing,
    selective_blocks: Option<usize>,
    peak: &dyn Fn(usize) -> f64,
    n_blocks: usize,
    device_bytes: Option<f64>,
) -> CheckpointingChoice {
    let choice = |mode, selective_blocks, reason: String| CheckpointingChoice {
        mode,
        selective_blocks,
        reason,
    };
    if asked != ActivationCheckpointing::Auto {
        return choice(asked, selective_blocks, "as configured".into());
    }
    let Some(total) = device_bytes else {
        return choice(
            ActivationCheckpointing::Blocks,
            None,
            "auto: blocks on the CPU".into(),
        );
    };
    let budget = AUTO_MEMORY_SHARE * total;
    let share = 100.0 * AUTO_MEMORY_SHARE;
    let all = peak(n_blocks);
    if all <= budget {
        let why = format!(
            "auto: selective's estimated peak {} is within {share:.0}% of the GPU's {}",
            human_bytes(all),
            human_bytes(total)
        );
        return choice(ActivationCheckpointing::Selective, None, why);
    }
    // the peak grows with s (activation_memory.rs tests it): the largest s that fits
    let fitting = (1..n_blocks).rev().find(|&s| peak(s) <= budget);
    let over = format!(
        "selective's estimated peak {} is over {share:.0}% of the GPU's {}",
        human_bytes(all),
        human_bytes(total)
    );
    match fitting {
        Some(s) => choice(
            ActivationCheckpointing::Selective,
            Some(s),
            format!(
                "auto: {over}; on {s} of {n_blocks} blocks it is {}",
                human_bytes(peak(s))
            ),
        ),
        None => choice(
            ActivationCheckpointing::Blocks,
            None,
            format!("auto: {over}"),
        ),
    }
}

/// The estimated peak bytes per rank of training `args` with "selective" on the first
/// `selective_blocks` blocks (None: all): `params` (all, trainable) of the policy over `world` ranks in
/// weights of `dtype_bytes`, plus `extra_frozen` parameters (a reference model, a critic) and the
/// activations of the configured batch and sequence length.
pub fn selective_peak(
    cfg: &RunConfig,
    args: &ModelArgs,
    params: (u64, u64),
    extra_frozen: u64,
    world: usize,
    dtype_bytes: usize,
    selective_blocks: Option<usize>,
) -> f64 {
    let state = MemoryEstimate::new(
        Counts::of_policy(args, params.0, params.1),
        dtype_bytes,
        world,
    );
    let acts = ActivationEstimate::with_selective_blocks(
        args,
        cfg.training.batch_size,
        cfg.data.max_length,
        dtype_bytes,
        ActivationCheckpointing::Selective,
        selective_blocks,
        cfg.training.chunk_rows,
    );
    state.total() + extra_frozen as f64 * dtype_bytes as f64 + acts.total()
}

/// The memory in bytes of the GPU `device` is, None for the CPU (or a GPU whose size cannot be read).
pub fn device_memory(device: &candle_core::Device) -> Option<f64> {
    match device {
        #[cfg(feature = "cuda")]
        candle_core::Device::Cuda(d) => {
            d.cuda_stream().context().total_mem().ok().map(|b| b as f64)
        }
        _ => None,
    }
}

/// `runtime.activation_checkpointing` for this run: "auto" resolved from the estimated peak per rank
/// with "selective" on all or some blocks (the policy over `world` ranks, the frozen `extra` models)
/// against `device`'s memory. Errors when `runtime.selective_blocks` exceeds the model's blocks.
pub fn for_run(
    cfg: &RunConfig,
    model: &Transformer,
    extra: [Option<&Transformer>; 2],
    world: usize,
    device: &candle_core::Device,
) -> Result<CheckpointingChoice> {
    let n_blocks = checkpointed_blocks(&model.args);
    check_selective_blocks(&model.args, cfg.runtime.selective_blocks)
        .context("runtime.selective_blocks")?;
    let frozen: u64 = extra.iter().flatten().map(|m| m.param_counts().0).sum();
    let peak = |s: usize| {
        selective_peak(
            cfg,
            &model.args,
            model.param_counts(),
            frozen,
            world,
            model.dtype().size_in_bytes(),
            Some(s),
        )
    };
    Ok(choose(
        cfg.runtime.activation_checkpointing,
        cfg.runtime.selective_blocks,
        &peak,
        n_blocks,
        device_memory(device),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ActivationCheckpointing::{Auto, Blocks, None as Keep, Selective};

    const GIB: f64 = (1u64 << 30) as f64;

    /// `choose` with one peak whatever s is.
    fn choose_flat(
        asked: ActivationCheckpointing,
        peak: f64,
        device: Option<f64>,
    ) -> CheckpointingChoice {
        choose(asked, None, &|_| peak, 22, device)
    }

    #[test]
    fn a_configured_mode_is_kept_whatever_the_memory() {
        for mode in [Blocks, Selective, Keep] {
            assert_eq!(choose_flat(mode, 1e15, Some(GIB)).mode, mode);
            assert_eq!(choose_flat(mode, 0.0, None).mode, mode);
        }
        let some = choose(Selective, Some(7), &|_| 1e15, 22, Some(GIB));
        assert_eq!((some.mode, some.selective_blocks), (Selective, Some(7)));
        assert_eq!(some.describe(22), "selective on 7 of 22 blocks");
        assert_eq!(choose_flat(Selective, 0.0, None).describe(22), "selective");
    }

    #[test]
    fn auto_picks_selective_only_when_its_peak_fits_the_share_of_the_gpu() {
        assert_eq!(
            choose_flat(Auto, 21.8 * GIB, Some(80.0 * GIB)).mode,
            Selective
        );
        assert_eq!(
            choose_flat(Auto, 72.0 * GIB, Some(80.0 * GIB)).mode,
            Selective
        );
        assert_eq!(choose_flat(Auto, 72.1 * GIB, Some(80.0 * GIB)).mode, Blocks);
        assert_eq!(choose_flat(Auto, 1.0, None).mode, Blocks);
        let why = choose_flat(Auto, 72.1 * GIB, Some(80.0 * GIB)).reason;
        assert!(why.contains("over 90%"), "{why}");
    }

    /// Between the two: the largest number of selective blocks whose peak fits 90% of the GPU.
    #[test]
    fn auto_takes_as_many_selective_blocks_as_fit() {
        // 40 GiB with none selective, +2 GiB per selective block: 72 GiB fits at 16 blocks, not 17
        let peak = |s: usize| (40.0 + 2.0 * s as f64) * GIB;
        let c = choose(Auto, None, &peak, 22, Some(80.0 * GIB));
        assert_eq!((c.mode, c.selective_blocks), (Selective, Some(16)));
        assert!(c.reason.contains("on 16 of 22 blocks"), "{}", c.reason);
        assert_eq!(c.describe(22), "selective on 16 of 22 blocks");
        // not even one block fits: "blocks"
        let c = choose(
            Auto,
            None,
            &|s| (71.0 + 2.0 * s as f64) * GIB,
            22,
            Some(80.0 * GIB),
        );
        assert_eq!((c.mode, c.selective_blocks), (Blocks, None));
    }

    /// The estimate agrees with `wmtp info`'s table (activation_memory.rs checks that one against the
    /// GPU's measured peaks): `7b_1t_4` LoRA r8 b4, seq 2048 — measured 39.3 GiB with "selective" on
    /// an H100, so auto picks it on an 80 GB card; b16 would not fit and falls back to "blocks".
    #[test]
    fn the_7b_lora_rows_choose_as_their_measured_peaks_say() {
        let args = ModelArgs::preset("7b_1t_4").unwrap();
        let lora = (args.n_trunk() + args.n_future_tokens) as u64 * 4 * 16 * args.dim as u64;
        let total = args.param_counts().total() + lora;
        let mut cfg = RunConfig::load(None, &[]).unwrap();
        cfg.data.max_length = 2048;
        cfg.training.chunk_rows = 2048;
        let mut peak = |batch| {
            cfg.training.batch_size = batch;
            selective_peak(&cfg, &args, (total, lora), 0, 1, 2, None)
        };
        let b4 = peak(4);
        assert!((b4 / GIB - 39.3).abs() < 0.06 * 39.3, "{}", b4 / GIB);
        let h100 = Some(79.1 * GIB);
        assert_eq!(choose_flat(Auto, b4, h100).mode, Selective);
        // b16: "selective" on every block would not fit an H100, on some of them it does
        cfg.training.batch_size = 16;
        let some = |s| selective_peak(&cfg, &args, (total, lora), 0, 1, 2, Some(s));
        let c = choose(Auto, None, &some, checkpointed_blocks(&args), h100);
        assert_eq!(c.mode, Selective);
        let s = c.selective_blocks.expect("some blocks, not all");
        assert!(s > 0 && s < checkpointed_blocks(&args), "{s}");
        assert!(
            some(s) <= AUTO_MEMORY_SHARE * 79.1 * GIB
                && some(s + 1) > AUTO_MEMORY_SHARE * 79.1 * GIB
        );
    }

    /// Full fine-tuning: `1b_mtp` b8, seq 2048, measured 43.3 GiB with "selective" (H100 and H200).
    #[test]
    fn the_1b_full_fine_tuning_row_matches_its_measured_peak() {
        let args = ModelArgs::preset("1b_mtp").unwrap();
        let total = args.param_counts().total();
        let mut cfg = RunConfig::load(None, &[]).unwrap();
        (
            cfg.data.max_length,
            cfg.training.chunk_rows,
            cfg.training.batch_size,
        ) = (2048, 2048, 8);
        let peak = selective_peak(&cfg, &args, (total, total), 0, 1, 2, None) / GIB;
        assert!((peak - 43.3).abs() < 0.06 * 43.3, "{peak}");
    }
}
