//! `runtime.activation_checkpointing = "auto"` (the default), resolved once when a session starts:
//! "selective" (faster: 1.07–1.21× PyTorch eager on bench/gpu's rows, against 0.81–0.93× for "blocks")
//! where the run's estimated peak per rank with it is at most [`AUTO_MEMORY_SHARE`] of the GPU's memory,
//! else "blocks" (the least memory); "blocks" on the CPU. The estimate is `wmtp info`'s: weights,
//! masters, gradients and AdamW state ([`MemoryEstimate`]) of the policy's parameter counts over the
//! run's ranks, the frozen reference and critic weights, and the activations of
//! `training.batch_size` × `data.max_length` tokens ([`ActivationEstimate`]).

use super::config::RunConfig;
use crate::model::activation_memory::{ActivationCheckpointing, ActivationEstimate};
use crate::model::args::ModelArgs;
use crate::model::memory::{human_bytes, Counts, MemoryEstimate};
use crate::model::Transformer;

/// The share of the GPU's memory the estimated peak with "selective" may take for "auto" to pick it:
/// the estimate is within 6% of the peaks bench/gpu measured; the rest is margin.
pub const AUTO_MEMORY_SHARE: f64 = 0.9;

/// The mode a session trains with and a line saying why (the start-up summary prints it).
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointingChoice {
    /// "blocks", "selective" or "none" (never "auto").
    pub mode: ActivationCheckpointing,
    /// Why: "as configured", or auto's estimate against the device's memory.
    pub reason: String,
}

/// The choice for `asked`, given the estimated peak bytes per rank with "selective" and the GPU's
/// memory in bytes (None: the CPU).
pub fn choose(
    asked: ActivationCheckpointing,
    selective_peak: f64,
    device_bytes: Option<f64>,
) -> CheckpointingChoice {
    if asked != ActivationCheckpointing::Auto {
        return CheckpointingChoice {
            mode: asked,
            reason: "as configured".into(),
        };
    }
    let Some(total) = device_bytes else {
        return CheckpointingChoice {
            mode: ActivationCheckpointing::Blocks,
            reason: "auto: blocks on the CPU".into(),
        };
    };
    let fits = selective_peak <= AUTO_MEMORY_SHARE * total;
    CheckpointingChoice {
        mode: if fits {
            ActivationCheckpointing::Selective
        } else {
            ActivationCheckpointing::Blocks
        },
        reason: format!(
            "auto: selective's estimated peak {} is {} {:.0}% of the GPU's {}",
            human_bytes(selective_peak),
            if fits { "within" } else { "over" },
            100.0 * AUTO_MEMORY_SHARE,
            human_bytes(total)
        ),
    }
}

/// The estimated peak bytes per rank of training `args` with "selective": `params` (all, trainable)
/// of the policy over `world` ranks in weights of `dtype_bytes`, plus `extra_frozen` parameters (a
/// reference model, a critic) and the activations of the configured batch and sequence length.
pub fn selective_peak(
    cfg: &RunConfig,
    args: &ModelArgs,
    params: (u64, u64),
    extra_frozen: u64,
    world: usize,
    dtype_bytes: usize,
) -> f64 {
    let state = MemoryEstimate::new(
        Counts::of_policy(args, params.0, params.1),
        dtype_bytes,
        world,
    );
    let acts = ActivationEstimate::new(
        args,
        cfg.training.batch_size,
        cfg.data.max_length,
        dtype_bytes,
        ActivationCheckpointing::Selective,
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
/// with "selective" (the policy over `world` ranks, the frozen `extra` models) against `device`'s memory.
pub fn for_run(
    cfg: &RunConfig,
    model: &Transformer,
    extra: [Option<&Transformer>; 2],
    world: usize,
    device: &candle_core::Device,
) -> CheckpointingChoice {
    let frozen: u64 = extra.iter().flatten().map(|m| m.param_counts().0).sum();
    let peak = selective_peak(
        cfg,
        &model.args,
        model.param_counts(),
        frozen,
        world,
        model.dtype().size_in_bytes(),
    );
    choose(
        cfg.runtime.activation_checkpointing,
        peak,
        device_memory(device),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ActivationCheckpointing::{Auto, Blocks, None as Keep, Selective};

    const GIB: f64 = (1u64 << 30) as f64;

    #[test]
    fn a_configured_mode_is_kept_whatever_the_memory() {
        for mode in [Blocks, Selective, Keep] {
            assert_eq!(choose(mode, 1e15, Some(GIB)).mode, mode);
            assert_eq!(choose(mode, 0.0, None).mode, mode);
        }
    }

    #[test]
    fn auto_picks_selective_only_when_its_peak_fits_the_share_of_the_gpu() {
        assert_eq!(choose(Auto, 21.8 * GIB, Some(80.0 * GIB)).mode, Selective);
        assert_eq!(choose(Auto, 72.0 * GIB, Some(80.0 * GIB)).mode, Selective);
        assert_eq!(choose(Auto, 72.1 * GIB, Some(80.0 * GIB)).mode, Blocks);
        assert_eq!(choose(Auto, 1.0, None).mode, Blocks);
        let why = choose(Auto, 72.1 * GIB, Some(80.0 * GIB)).reason;
        assert!(why.contains("over 90%"), "{why}");
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
            selective_peak(&cfg, &args, (total, lora), 0, 1, 2)
        };
        let b4 = peak(4);
        assert!((b4 / GIB - 39.3).abs() < 0.06 * 39.3, "{}", b4 / GIB);
        let h100 = Some(79.1 * GIB);
        assert_eq!(choose(Auto, b4, h100).mode, Selective);
        assert_eq!(choose(Auto, peak(16), h100).mode, Blocks);
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
        let peak = selective_peak(&cfg, &args, (total, total), 0, 1, 2) / GIB;
        assert!((peak - 43.3).abs() < 0.06 * 43.3, "{peak}");
    }
}
