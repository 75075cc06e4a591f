//! Training-memory estimates per rank from parameter counts, for what the trainer keeps (activations
//! excluded: they depend on batch, sequence and `runtime.activation_checkpointing`).
//!
//! One rank (no sharding): every weight in the run dtype; an f32 master of each trainable weight whose
//! dtype is narrower than f32; f32 gradients and AdamW moments (2 × f32) of the trainable weights.
//!
//! W > 1 ranks (FSDP FULL_SHARD, `host/src/parallel/fsdp.rs`): 1/W of the frozen weights in the run dtype;
//! 1/W of the trainable weights as f32 shards (they are the masters; no run-dtype copy is kept);
//! 1/W of the moments; 1/W of the gradients (the step's shard sums) plus one unit's full gradients
//! while that unit is reduce-scattered; and the gathered copies of the units in use — at most two at a
//! time (the output unit with a head block) — in the run dtype.

/// Bytes per part, per rank.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryEstimate {
    /// Weights kept in the run dtype (under FSDP: this rank's shard of the frozen ones).
    pub weights: f64,
    /// f32 copies of trainable weights: masters when the run dtype is narrower (one rank), the f32
    /// shards (FSDP).
    pub masters: f64,
    /// f32 gradients of trainable weights (FSDP: the shard sums and one unit's full gradients).
    pub grads: f64,
    /// AdamW first and second moments (f32).
    pub adam_state: f64,
    /// FSDP: gathered copies of the units in use (transient), else 0.
    pub gathered: f64,
}

/// Parameter counts the estimate needs.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Counts {
    /// All parameters.
    pub total: u64,
    /// Trained parameters.
    pub trainable: u64,
    /// Parameters of the largest FSDP unit (a block, the embedding, or norm + output).
    pub largest_unit: u64,
    /// Trained parameters of the unit with the most of them.
    pub largest_unit_trainable: u64,
}

impl Counts {
    /// The counts of a policy of shape `args` with `total` parameters of which `trainable` are trained.
    /// All trained (full fine-tuning): the largest unit is trained whole. Fewer (LoRA, part of the model):
    /// the trained parameters are spread over the blocks, beside each block's frozen ones.
    pub fn of_policy(args: &super::args::ModelArgs, total: u64, trainable: u64) -> Self {
        let c = args.param_counts();
        let largest = args.block_params().max(c.embedding).max(c.norm_and_output);
        let (largest_unit, largest_unit_trainable) = if trainable >= total {
            (largest, largest)
        } else {
            let per_block = trainable.div_ceil(args.n_layers.max(1) as u64);
            (largest + per_block, per_block)
        };
        Counts {
            total,
            trainable,
            largest_unit,
            largest_unit_trainable,
        }
    }
}

impl MemoryEstimate {
    /// The estimate for `c` with weights of `dtype_bytes` bytes over `world_size` ranks (FSDP when
    /// more than one).
    pub fn new(c: Counts, dtype_bytes: usize, world_size: usize) -> Self {
        let (t, d) = (c.trainable as f64, dtype_bytes as f64);
        if world_size <= 1 {
            return MemoryEstimate {
                weights: c.total as f64 * d,
                masters: if dtype_bytes < 4 { t * 4.0 } else { 0.0 },
                grads: t * 4.0,
                adam_state: t * 8.0,
                gathered: 0.0,
            };
        }
        let w = world_size as f64;
        MemoryEstimate {
            weights: (c.total - c.trainable) as f64 * d / w,
            masters: t * 4.0 / w,
            grads: t * 4.0 / w + c.largest_unit_trainable as f64 * 4.0,
            adam_state: t * 8.0 / w,
            gathered: 2.0 * c.largest_unit as f64 * d,
        }
    }

    /// What stays allocated between steps: weights, masters and moments (not gradients or gathered
    /// copies).
    pub fn persistent(&self) -> f64 {
        self.weights + self.masters + self.adam_state
    }

    /// Sum of the parts.
    pub fn total(&self) -> f64 {
        self.weights + self.masters + self.grads + self.adam_state + self.gathered
    }
}

/// Human-readable bytes (GiB / MiB / KiB).
pub fn human_bytes(b: f64) -> String {
    const K: f64 = 1024.0;
    if b >= K * K * K {
        format!("{:.2} GiB", b / (K * K * K))
    } else if b >= K * K {
        format!("{:.1} MiB", b / (K * K))
    } else {
        format!("{:.1} KiB", b / K)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seven_b_full_vs_lora() {
        let n = 6_738_415_616;
        let one = |trainable| Counts {
            total: n,
            trainable,
            largest_unit: 131_076_096,
            largest_unit_trainable: trainable.min(202_383_360),
        };
        // the seed plan's table: full fine-tuning of 6.7B → ~54 GB AdamW state, ~27 GB grads
        let full = MemoryEstimate::new(one(n), 2, 1);
        assert!((full.adam_state / 1e9 - 53.9).abs() < 0.1);
        assert!((full.grads / 1e9 - 26.95).abs() < 0.1);
        // bf16 full fine-tuning keeps an f32 master of every weight; f32 runs need none
        assert!((full.masters / 1e9 - 26.95).abs() < 0.1);
        assert_eq!(MemoryEstimate::new(one(100), 4, 1).masters, 0.0);
        // FSDP over 4: a quarter of the state, the frozen weights included
        let lora = MemoryEstimate::new(one(8_388_608), 2, 4);
        assert!(lora.adam_state < 20e6 && (lora.weights / 1e9 - 3.37).abs() < 0.01);
        let sharded = MemoryEstimate::new(one(n), 2, 4);
        assert!((sharded.adam_state * 4.0 - full.adam_state).abs() < 1.0);
        assert_eq!(
            sharded.weights, 0.0,
            "full FT: every weight is an f32 shard"
        );
    }
}
