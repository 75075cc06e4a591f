//! FSDP as an implementation of the parallel-strategy seam (`parallel/strategy.rs`): every call the
//! engine, the step, checkpoints and the console make, answered from the shards.

use super::Fsdp;
use crate::model::{Transformer, Unit, VisitParams};
use crate::parallel::strategy::Strategy;
use anyhow::Result;
use candle_core::Tensor;
use std::collections::HashMap;

impl Strategy for Fsdp {
    fn rank(&self) -> usize {
        Fsdp::rank(self)
    }

    fn world_size(&self) -> usize {
        Fsdp::world_size(self)
    }

    /// A copy of the model with `units` gathered from the shards (the model's own weights stay
    /// released), prefetching `next` ([`Fsdp::materialize_next`]).
    fn with_units<'m>(
        &self,
        model: &'m Transformer,
        units: &[Unit],
        next: Option<Unit>,
    ) -> Result<std::borrow::Cow<'m, Transformer>> {
        Ok(std::borrow::Cow::Owned(
            self.materialize_next(model, units, next)?,
        ))
    }

    /// [`Fsdp::reduce_scatter_unit`].
    fn unit_backward_done(&self, unit: Unit, grads: &mut crate::model::grads::Grads) -> Result<()> {
        self.reduce_scatter_unit(unit, grads)
    }

    fn sum_over_ranks(&self, xs: &[f64]) -> Result<Vec<f64>> {
        let local = Tensor::new(xs, &candle_core::Device::Cpu)?;
        Ok(self.comm().all_reduce_sum(&local)?.to_vec1::<f64>()?)
    }

    /// [`Fsdp::sharded_update`]: the policy's parameters are this rank's shards, not `policy`'s.
    fn update(
        &mut self,
        _policy: &mut Transformer,
        replicated: &mut [crate::parallel::strategy::Replicated<'_>],
        opt: &mut dyn crate::optim::Optimizer,
        grads: &mut crate::model::grads::Grads,
        max_grad_norm: f64,
    ) -> Result<crate::parallel::strategy::Update> {
        self.sharded_update(replicated, opt, grads, max_grad_norm)
    }

    fn sharded(&self) -> bool {
        true
    }

    /// [`Fsdp::param_counts`], from the shards' layouts.
    fn param_counts(&self, _model: &Transformer) -> (u64, u64) {
        Fsdp::param_counts(self)
    }

    fn describe(&self) -> Option<String> {
        let (frozen, shards) = self.shard_bytes();
        Some(format!(
            "{} (sharding {:?}; rank 0 holds {} of frozen weights and {} of f32 trainable shards)",
            self.world_size(),
            self.mode(),
            crate::model::memory::human_bytes(frozen as f64),
            crate::model::memory::human_bytes(shards as f64),
        ))
    }

    /// [`Fsdp::gather_for_saving`] (the LoRA factors only when the model has adapters) and
    /// [`Fsdp::gather_optimizer_state`].
    fn gather_for_saving(
        &self,
        model: &Transformer,
        opt_state: HashMap<String, Tensor>,
        slots: &[&str],
    ) -> Result<(Transformer, HashMap<String, Tensor>)> {
        let gathered = Fsdp::gather_for_saving(self, model, model.lora.is_some())?;
        Ok((gathered, self.gather_optimizer_state(opt_state, slots)?))
    }

    /// [`Fsdp::shard_index`] and [`Fsdp::rank_tensors`].
    fn rank_part(
        &self,
        opt_state: &HashMap<String, Tensor>,
        slots: &[&str],
    ) -> Result<crate::parallel::strategy::RankPart> {
        Ok(crate::parallel::strategy::RankPart {
            index: self.shard_index(),
            tensors: self.rank_tensors(opt_state, slots)?,
        })
    }

    fn owned_params(&self) -> Option<&dyn VisitParams> {
        Some(self)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}
