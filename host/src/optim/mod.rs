//! Optimisation (design.md §6): the [`Optimizer`] seam the step updates parameters through, the
//! learning-rate [`Schedule`] (linear warm-up from 1e-8·peak, then cosine to min_lr_ratio·peak), per-group
//! settings and global-norm gradient clipping. [`adamw::AdamW`] is the implementation runs use; a new
//! optimiser is one more file here implementing the trait (tests/train_pipelines.rs trains with a plain
//! SGD through it).

pub mod adamw;

pub use adamw::{AdamW, AdamWConfig};

use crate::model::grads::Grads;
use crate::model::{ParamGroup, VisitParams};
use anyhow::Result;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// What the training step needs from an optimiser. Parameters are named as in checkpoints; the state
/// is named tensors `<slot>.<parameter name>` (e.g. AdamW's `m.`, `v.`) plus, for parameters whose
/// compute dtype is narrower than f32, optional `master.<name>` f32 copies — FSDP shards every slot of
/// [`Optimizer::sharded_slots`] like its parameter and rebuilds `master.` from its f32 shards.
pub trait Optimizer: std::fmt::Debug + Send {
    /// Optimizer steps taken (the schedule's position).
    fn steps_taken(&self) -> u64;
    /// The learning rate of the next step for `group` (peak × schedule; 0 for a group it has no
    /// settings for).
    fn lr(&self, group: ParamGroup) -> f64;
    /// Whether [`Optimizer::update_module`] takes a fused multi-tensor path for `module`, in which case
    /// the caller folds clipping into `gscale` instead of scaling the gradients first.
    fn fuses(&self, _module: &dyn VisitParams) -> bool {
        false
    }
    /// Updates every trainable parameter of `module` (named under `prefix`) that has a gradient in
    /// `grads`, each gradient multiplied by `gscale` first.
    fn update_module(
        &mut self,
        module: &mut dyn VisitParams,
        prefix: &str,
        grads: &Grads,
        gscale: f64,
    ) -> Result<()>;
    /// Ends an optimizer step (advances the schedule).
    fn finish_step(&mut self);
    /// The state as named tensors and the step, for checkpoints.
    fn state(&self) -> (HashMap<String, Tensor>, u64);
    /// Restores [`Optimizer::state`].
    fn load_state(&mut self, tensors: HashMap<String, Tensor>, step: u64) -> Result<()>;
    /// The per-parameter state slots, sharded like their parameter under FSDP (`["m", "v"]` for AdamW).
    fn sharded_slots(&self) -> &'static [&'static str];
}

/// Learning rate and weight decay of one parameter group.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GroupSettings {
    /// Peak learning rate.
    pub lr: f64,
    /// Decoupled weight decay (applied to ≥ 2-D tensors only).
    pub weight_decay: f64,
}

/// Warm-up + cosine schedule: lr(s) = peak·f(s).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Total optimizer steps.
    pub total_steps: u64,
    /// Share of steps spent warming up linearly from 1e-8·peak.
    pub warmup_ratio: f64,
    /// Final lr as a share of peak.
    pub min_lr_ratio: f64,
}

impl Schedule {
    /// The multiplier of peak lr at optimizer step `step` (0-based).
    pub fn factor(&self, step: u64) -> f64 {
        let warm = (self.warmup_ratio * self.total_steps as f64).round() as u64;
        if step < warm {
            let p = (step + 1) as f64 / warm as f64;
            return 1e-8 + (1.0 - 1e-8) * p;
        }
        let rest = self.total_steps.saturating_sub(warm).max(1);
        let p = ((step - warm) as f64 / rest as f64).min(1.0);
        self.min_lr_ratio
            + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
    }
}

/// Scales `grads` so their global norm is at most `max_norm`; returns the norm before clipping.
pub fn clip_global_norm(grads: &mut Grads, max_norm: f64) -> Result<f64> {
    let norm = grads.global_norm()?;
    // a non-finite norm is not clipped (that would multiply by 0 or NaN): the caller skips the step
    if max_norm > 0.0 && norm.is_finite() && norm > max_norm {
        grads.scale(max_norm / (norm + 1e-6))?;
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedule_warms_up_then_decays() {
        let s = Schedule {
            total_steps: 100,
            warmup_ratio: 0.1,
            min_lr_ratio: 0.1,
        };
        assert!((s.factor(0) - 0.1).abs() < 1e-6);
        assert!((s.factor(9) - 1.0).abs() < 1e-9);
        assert!((s.factor(10) - 1.0).abs() < 1e-9);
        assert!((s.factor(55) - 0.55).abs() < 1e-9);
        assert!((s.factor(100) - 0.1).abs() < 1e-9);
    }

    #[test]
    fn clipping_bounds_the_global_norm() -> Result<()> {
        let mut g = Grads::default();
        g.add("a", &Tensor::new(&[3.0f32, 4.0], &Device::Cpu)?)?;
        assert!((clip_global_norm(&mut g, 1.0)? - 5.0).abs() < 1e-9);
        assert!((g.global_norm()? - 1.0).abs() < 1e-5);
        Ok(())
    }
}
