//! FSDP gradients: each unit's reduce-scattered right after its backward, summed over the step, turned
//! into the shard gradients the optimiser reads, and the global norm.

use super::{Fsdp, Pending, Sharding, TrainableBucket, Unit};
use crate::model::grads::Grads;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};

impl Fsdp {
    /// Moves `unit`'s gradients out of `grads` (full, by checkpoint name) into this rank's shard
    /// gradients: each trainable bucket is flattened (zeros for missing parts) and reduce-scattered, and
    /// the slice is added to the step's sums. Called by the engine right after a unit's backward, so a
    /// rank never holds more than one unit's full gradients. A collective: every rank flushes the same
    /// units in the same order, whether or not its data gave them gradients.
    pub fn reduce_scatter_unit(&self, unit: Unit, grads: &mut Grads) -> Result<()> {
        let u = self
            .units
            .get(&unit)
            .with_context(|| format!("FSDP has no unit {unit:?}"))?;
        let dev = self.device();
        for tb in &u.trainable {
            let mut any = false;
            let parts: Vec<Tensor> = tb
                .bucket
                .names
                .iter()
                .zip(&tb.bucket.layout.parts)
                .map(|(n, (shape, _))| match grads.by_name.remove(n) {
                    Some(g) => {
                        any = true;
                        g.to_dtype(DType::F32)
                    }
                    None => Tensor::zeros(shape.as_slice(), DType::F32, &dev),
                })
                .collect::<candle_core::Result<_>>()?;
            let full = tb.bucket.layout.flatten(&parts)?;
            let mine = match self.mode {
                Sharding::None => self.comm.all_reduce_sum(&full)?,
                _ => self.comm.reduce_scatter_sum(&full)?,
            };
            let mut p = self.lock_pending()?;
            let sum = match p.sums.remove(&tb.key) {
                Some(prev) => (prev + mine)?,
                None => mine,
            };
            p.sums.insert(tb.key.clone(), sum);
            if any {
                p.present.insert(tb.key.clone());
            }
        }
        Ok(())
    }

    fn lock_pending(&self) -> Result<std::sync::MutexGuard<'_, Pending>> {
        self.pending
            .lock()
            .map_err(|_| anyhow::anyhow!("FSDP: a thread panicked while adding gradients"))
    }

    /// The step's gradients of this rank's shards, keyed like [`Fsdp`]'s parameters: the sums over
    /// ranks [`Fsdp::reduce_scatter_unit`] gathered, and the `replicated` trainable tensors' (name,
    /// shape: the value head) gradients left in `grads`, all-reduced — sums, not yet ÷ W: the mean
    /// over ranks is taken by the optimiser's gradient scale ([`Fsdp::sharded_update`]), so no copy of
    /// the gradients is made for it. Resets the sums for the next step.
    ///
    /// Which tensors have a gradient depends on the data (a head whose coefficients are all zero gets
    /// none), so the ranks first agree on it (one all-reduce of presence flags): a bucket, or a
    /// replicated tensor, without a gradient on any rank gets none (the optimiser leaves it alone, as
    /// it would unsharded); a bucket where some rank had some gradient gets one, zeros standing in for
    /// the missing parts (as PyTorch's flat-parameter FSDP does).
    pub fn finish_grads(
        &self,
        grads: &Grads,
        replicated: &[(String, Vec<usize>)],
    ) -> Result<Grads> {
        if let Some(n) = grads.by_name.keys().find(|n| Unit::of(n).is_some()) {
            bail!(
                "FSDP: the gradient of `{n}` was never reduce-scattered (its unit was not flushed)"
            );
        }
        let (sums, present_here) = {
            let mut p = self.lock_pending()?;
            (std::mem::take(&mut p.sums), std::mem::take(&mut p.present))
        };
        let buckets: Vec<&TrainableBucket> =
            self.units.values().flat_map(|u| &u.trainable).collect();
        let flags: Vec<f32> = buckets
            .iter()
            .map(|tb| present_here.contains(&tb.key))
            .chain(
                replicated
                    .iter()
                    .map(|(n, _)| grads.by_name.contains_key(n)),
            )
            .map(|b| if b { 1.0 } else { 0.0 })
            .collect();
        let present = if flags.is_empty() {
            flags
        } else {
            self.comm
                .all_reduce_sum(&Tensor::new(flags.as_slice(), &candle_core::Device::Cpu)?)?
                .to_vec1::<f32>()?
        };
        let mut out = Grads::default();
        for (tb, &p) in buckets.iter().zip(&present) {
            if p == 0.0 {
                continue;
            }
            let Some(sum) = sums.get(&tb.key) else {
                bail!(
                    "FSDP: bucket `{}` has a gradient on some rank but was never reduce-scattered here",
                    tb.key
                );
            };
            let g = sum.reshape(tb.shard.tensor().dims())?;
            out.by_name.insert(tb.key.clone(), g);
        }
        let dev = self.device();
        for ((name, shape), &p) in replicated.iter().zip(&present[buckets.len()..]) {
            if p == 0.0 {
                continue;
            }
            let g = match grads.by_name.get(name) {
                Some(g) => g.to_dtype(DType::F32)?,
                None => Tensor::zeros(shape.as_slice(), DType::F32, &dev)?,
            };
            out.by_name
                .insert(name.clone(), self.comm.all_reduce_sum(&g)?);
        }
        Ok(out)
    }

    /// √(Σ g²) over the whole model of shard gradients ([`Fsdp::finish_grads`]'s sums): local sums of
    /// squares of the shards all-reduced, plus the replicated gradients' (identical on every rank).
    pub fn global_norm(&self, shard_grads: &Grads) -> Result<f64> {
        // Σg² per tensor stays on the device; one copy to the host for all of them
        let (mut names, mut sums) = (Vec::new(), Vec::new());
        for (name, g) in &shard_grads.by_name {
            names.push(name.starts_with("fsdp."));
            sums.push(g.to_dtype(DType::F32)?.sqr()?.sum_all()?);
        }
        let (mut sharded, mut replicated) = (0f64, 0f64);
        if !sums.is_empty() {
            let all: Vec<f32> = Tensor::stack(&sums, 0)?.to_vec1()?;
            for (is_shard, s) in names.into_iter().zip(all) {
                if is_shard {
                    sharded += s as f64;
                } else {
                    replicated += s as f64;
                }
            }
        }
        let dev = self.device();
        // every rank holds whole vectors under NO_SHARD: its sum is already the total
        let total = match self.mode {
            Sharding::None => sharded,
            _ => self
                .comm
                .all_reduce_sum(&Tensor::new(&[sharded as f32], &dev)?)?
                .to_vec1::<f32>()?[0] as f64,
        };
        Ok((total + replicated).sqrt())
    }
}
