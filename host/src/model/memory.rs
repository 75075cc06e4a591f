//! Training-memory estimates from parameter counts, for what the trainer keeps: weights in the run dtype,
//! f32 gradients and AdamW moments (2 × f32) for trainable parameters, and an f32 master copy of each
//! trainable parameter whose run dtype is narrower than f32 (bf16/f16: the optimiser updates the master,
//! the weight is its rounding); everything divided over `world_size` ranks under FSDP FULL_SHARD.
//! Activations are not included (they depend on batch, sequence and `runtime.activation_checkpointing`).

/// Bytes per part, per rank.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryEstimate {
    /// All weights in the run dtype.
    pub weights: f64,
    /// f32 gradients of trainable parameters.
    pub grads: f64,
    /// AdamW first and second moments (f32).
    pub adam_state: f64,
    /// f32 master copies of trainable parameters (0 when the run dtype is f32).
    pub masters: f64,
}

impl MemoryEstimate {
    /// Estimate for `total` parameters of which `trainable` are trained, weights of `dtype_bytes` bytes,
    /// sharded over `world_size` ranks.
    pub fn new(total: u64, trainable: u64, dtype_bytes: usize, world_size: usize) -> Self {
        let n = world_size.max(1) as f64;
        MemoryEstimate {
            weights: total as f64 * dtype_bytes as f64 / n,
            grads: trainable as f64 * 4.0 / n,
            adam_state: trainable as f64 * 8.0 / n,
            masters: if dtype_bytes < 4 {
                trainable as f64 * 4.0 / n
            } else {
                0.0
            },
        }
    }

    /// Sum of the parts.
    pub fn total(&self) -> f64 {
        self.weights + self.grads + self.adam_state + self.masters
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
        // the seed plan's table: full fine-tuning of 6.7B → ~54 GB AdamW state, ~27 GB grads
        let full = MemoryEstimate::new(6_738_415_616, 6_738_415_616, 2, 1);
        assert!((full.adam_state / 1e9 - 53.9).abs() < 0.1);
        assert!((full.grads / 1e9 - 26.95).abs() < 0.1);
        let lora = MemoryEstimate::new(6_738_415_616, 8_388_608, 2, 4);
        assert!(lora.adam_state < 20e6 && lora.weights > 3e9);
        // bf16 full fine-tuning keeps an f32 master of every weight; f32 runs need none
        assert!((full.masters / 1e9 - 26.95).abs() < 0.1);
        assert_eq!(MemoryEstimate::new(100, 100, 4, 1).masters, 0.0);
    }
}
