//! The parallel-strategy seam: how one training step spreads over ranks. The engine and the step call
//! only [`Strategy`]; [`NoSharding`] (one rank holding the whole model) and FSDP
//! (`Fsdp`, in fsdp/) are its implementations, so a new strategy (e.g. tensor parallelism) is a
//! new implementation, not a new `Option` threaded through the training code.
//!
//! Every method may be a collective: all ranks call the same methods in the same order, whatever their
//! data (the engine's unit order depends only on the model).

use super::shard::ShardIndex;
use crate::model::grads::Grads;
use crate::model::{Transformer, Unit, VisitParams};
use crate::optim::{clip_global_norm, Optimizer};
use anyhow::{bail, Result};
use candle_core::Tensor;
use std::borrow::Cow;
use std::collections::HashMap;

/// A module every rank holds whole and updates alike (the value head), with the prefix its parameters'
/// gradients are named under (`"value_head."`).
pub type Replicated<'a> = (&'a str, &'a mut dyn VisitParams);

/// What [`Strategy::update`] did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Update {
    /// √Σg² over every trainable parameter of every rank, before clipping.
    pub grad_norm: f64,
    /// The norm was not finite, so no parameter changed.
    pub skipped: bool,
}

/// This rank's part of a per-rank checkpoint (`checkpoint.sharded`), from [`Strategy::rank_part`].
pub struct RankPart {
    /// The layout every rank shares (`shards/index.json`).
    pub index: ShardIndex,
    /// This rank's slices and their optimiser slots; None when another rank writes the same slices.
    pub tensors: Option<HashMap<String, Tensor>>,
}

/// How a step's forward, backward and reductions run over the ranks, and what the rest of a run (the
/// checkpoint writer, the console) asks about the model's placement.
pub trait Strategy {
    /// This rank, 0-based.
    fn rank(&self) -> usize;

    /// Number of ranks (data-parallel replicas of the step).
    fn world_size(&self) -> usize;

    /// The model with `units` holding their weights, about to run: `model` itself when it holds them, or
    /// a copy with them gathered (dropped by the caller after use). `next` names the unit the engine
    /// asks for after these, so a strategy can fetch it while these compute (prefetch).
    fn with_units<'m>(
        &self,
        model: &'m Transformer,
        units: &[Unit],
        next: Option<Unit>,
    ) -> Result<Cow<'m, Transformer>>;

    /// Called once `unit`'s backward is done: its gradients in `grads` are final for this micro-batch
    /// (FSDP reduce-scatters them into this rank's shard sums; one rank keeps them where they are).
    fn unit_backward_done(&self, unit: Unit, grads: &mut Grads) -> Result<()>;

    /// Σ over ranks of each of `xs` (the step's loss, CE and token count), on every rank.
    fn sum_over_ranks(&self, xs: &[f64]) -> Result<Vec<f64>>;

    /// The optimiser step over the step's gradients `grads` (summed over micro-batches): clip them to
    /// global norm `max_grad_norm` (0: no clipping), g ← g·min(1, max/(‖g‖ + 1e-6)) with ‖g‖ over all
    /// ranks, then let `opt` update the parameters this rank owns — the policy's (its shards under
    /// FSDP) and each of `replicated`. A non-finite ‖g‖ changes nothing ([`Update::skipped`]). The
    /// caller advances the optimiser's schedule and clears `grads`.
    fn update(
        &mut self,
        policy: &mut Transformer,
        replicated: &mut [Replicated<'_>],
        opt: &mut dyn Optimizer,
        grads: &mut Grads,
        max_grad_norm: f64,
    ) -> Result<Update>;

    /// Whether the policy's weights are spread over ranks (the model's own weights then released):
    /// loading a checkpoint into the model and switching `[[stages]]` need it whole.
    fn sharded(&self) -> bool {
        false
    }

    /// (all, trainable) parameters of the whole policy, not this rank's share.
    fn param_counts(&self, model: &Transformer) -> (u64, u64) {
        model.param_counts()
    }

    /// One line for the run's start-up summary saying how the model is spread (None: one rank).
    fn describe(&self) -> Option<String> {
        None
    }

    /// What a full checkpoint stores of the policy and of the optimiser state `opt_state` (its
    /// per-parameter `slots`, e.g. `m`, `v`, cut to this rank's shards): on rank 0, which writes, the
    /// whole of both; elsewhere what passed through. A collective: every rank calls it.
    fn gather_for_saving(
        &self,
        model: &Transformer,
        opt_state: HashMap<String, Tensor>,
        _slots: &[&str],
    ) -> Result<(Transformer, HashMap<String, Tensor>)> {
        Ok((model.clone(), opt_state)) // a clone shares the tensors
    }

    /// This rank's part of a per-rank checkpoint, with the optimiser state `opt_state` and its
    /// `slots`. Only a sharded strategy has one.
    fn rank_part(&self, _opt_state: &HashMap<String, Tensor>, _slots: &[&str]) -> Result<RankPart> {
        bail!("a per-rank checkpoint (checkpoint.sharded) needs a sharded (launched) run")
    }

    /// The parameters this rank updates when they are not the model's own (its shards), for the
    /// checks a checkpoint makes before writing; None: the model's.
    fn owned_params(&self) -> Option<&dyn VisitParams> {
        None
    }

    /// The implementation itself, for tests and tools that read a strategy's own figures.
    fn as_any(&self) -> &dyn std::any::Any;
}

/// One rank, the whole model in its memory: units are the model itself, gradients stay in place, sums
/// are the values themselves.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSharding;

impl Strategy for NoSharding {
    fn rank(&self) -> usize {
        0
    }

    fn world_size(&self) -> usize {
        1
    }

    fn with_units<'m>(
        &self,
        model: &'m Transformer,
        _units: &[Unit],
        _next: Option<Unit>,
    ) -> Result<Cow<'m, Transformer>> {
        Ok(Cow::Borrowed(model))
    }

    fn unit_backward_done(&self, _unit: Unit, _grads: &mut Grads) -> Result<()> {
        Ok(())
    }

    fn sum_over_ranks(&self, xs: &[f64]) -> Result<Vec<f64>> {
        Ok(xs.to_vec())
    }

    /// On CUDA with a fused optimiser: one launch for Σg² and the clipping folded into the update's
    /// gradient scale; else the gradients are scaled in place first.
    fn update(
        &mut self,
        policy: &mut Transformer,
        replicated: &mut [Replicated<'_>],
        opt: &mut dyn Optimizer,
        grads: &mut Grads,
        max_grad_norm: f64,
    ) -> Result<Update> {
        let fused = opt.fuses(&*policy) && replicated.iter().all(|(_, m)| opt.fuses(&**m));
        let (grad_norm, gscale) = if fused {
            let norm = fused_norm(grads)?;
            let clip = max_grad_norm > 0.0 && norm > max_grad_norm;
            (
                norm,
                if clip {
                    max_grad_norm / (norm + 1e-6)
                } else {
                    1.0
                },
            )
        } else {
            (clip_global_norm(grads, max_grad_norm)?, 1.0)
        };
        let skipped = !grad_norm.is_finite();
        if !skipped {
            opt.update_module(policy, "", grads, gscale)?;
            for (prefix, m) in replicated.iter_mut() {
                opt.update_module(&mut **m, prefix, grads, gscale)?;
            }
        }
        Ok(Update { grad_norm, skipped })
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// √Σg² over all gradients in one kernel launch (CUDA builds; the plain sum otherwise).
fn fused_norm(grads: &Grads) -> Result<f64> {
    #[cfg(feature = "cuda")]
    {
        let all: Vec<&candle_core::Tensor> = grads.by_name.values().collect();
        Ok(crate::kernels::adamw::sum_squares(&all)?.sqrt())
    }
    #[cfg(not(feature = "cuda"))]
    {
        grads.global_norm()
    }
}
