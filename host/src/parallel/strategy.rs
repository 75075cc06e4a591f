//! The parallel-strategy seam: how one training step spreads over ranks. The engine and the step call
//! only [`Strategy`]; [`NoSharding`] (one rank holding the whole model) and FSDP
//! ([`super::fsdp::Fsdp`]) are its implementations, so a new strategy (e.g. tensor parallelism) is a
//! new implementation, not a new `Option` threaded through the training code.
//!
//! Every method may be a collective: all ranks call the same methods in the same order, whatever their
//! data (the engine's unit order depends only on the model).

use crate::model::grads::Grads;
use crate::model::{Transformer, Unit};
use anyhow::Result;
use std::borrow::Cow;

/// How a step's forward, backward and reductions run over the ranks.
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
}
