//! The FSDP optimiser step ([`Fsdp::sharded_update`], FSDP's [`super::super::strategy::Strategy::update`]):
//! the step's gradients reduce-scattered into this rank's shard gradients (sums over ranks), the global
//! norm from all-reduced local squares, then the optimiser on this rank's shards and on the replicated
//! modules (the value head, whose gradients every rank sums alike) with the mean over ranks (1/W) and the
//! clipping factor folded into its gradient scale, so no scaled copy of the gradients exists.

use super::Fsdp;
use crate::model::grads::Grads;
use crate::optim::Optimizer;
use crate::parallel::strategy::{Replicated, Update};
use anyhow::Result;

impl Fsdp {
    /// Clips and applies one optimiser step to this rank's shards and to `replicated`.
    pub fn sharded_update(
        &mut self,
        replicated: &mut [Replicated<'_>],
        opt: &mut dyn Optimizer,
        grads: &Grads,
        max_grad_norm: f64,
    ) -> Result<Update> {
        let mut names: Vec<(String, Vec<usize>)> = Vec::new();
        for (prefix, m) in replicated.iter() {
            for (n, p) in m.named_params() {
                if p.is_trainable() {
                    names.push((format!("{prefix}{n}"), p.tensor().dims().to_vec()));
                }
            }
        }
        // nothing gathered ahead may read the shards while they change
        self.settle()?;
        // sums over ranks: the mean gradient is g / W, whose norm is the sums' norm / W
        let g = self.finish_grads(grads, &names)?;
        let w = self.world_size() as f64;
        let grad_norm = self.global_norm(&g)? / w;
        if !grad_norm.is_finite() {
            return Ok(Update {
                grad_norm,
                skipped: true,
            });
        }
        let clip = if max_grad_norm > 0.0 && grad_norm > max_grad_norm {
            max_grad_norm / (grad_norm + 1e-6)
        } else {
            1.0
        };
        // 1/W and the clip applied by the optimiser as it reads each gradient (the fused AdamW's
        // gradient scale): no divided or clipped copy of the shard gradients is ever made
        let gscale = clip / w;
        opt.update_module(self, "", &g, gscale)?;
        self.weights_changed();
        for (prefix, m) in replicated.iter_mut() {
            opt.update_module(&mut **m, prefix, &g, gscale)?;
        }
        Ok(Update {
            grad_norm,
            skipped: false,
        })
    }
}
