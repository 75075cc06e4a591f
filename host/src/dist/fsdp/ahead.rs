//! Prefetch: a unit's all-gather issued ahead of its use on the communicator's second stream
//! ([`crate::dist::Communicator::all_gather_ahead`]), so the next unit's weights travel while the
//! current unit computes. The engine names the next unit ([`Fsdp::materialize_next`]); the gathered
//! flat vectors wait here until that unit is asked for, then the compute stream joins the second stream
//! and they are cut into tensors. A prefetched unit that is not asked for next is joined and dropped
//! (the gather was wasted, nothing else). One unit ahead at most: the memory of one more unit's
//! weights. Only under FULL_SHARD over a communicator with a second stream (NCCL); elsewhere
//! `materialize_next` gathers on demand as before.

use super::{Fsdp, Sharding, Unit};
use anyhow::{Context, Result};
use candle_core::Tensor;
use std::collections::HashMap;
use std::sync::atomic::Ordering;

/// A unit whose gathers were issued ahead: one flat vector per bucket (frozen first, then the
/// trainable ones in order), not to be read before the join.
#[derive(Debug)]
pub(super) struct Ahead {
    unit: Unit,
    frozen: Option<Tensor>,
    trainable: Vec<Tensor>,
}

impl Ahead {
    /// The unit it holds.
    pub(super) fn unit(&self) -> Unit {
        self.unit
    }
}

impl Fsdp {
    /// Turns prefetching on or off; it stays off unless sharding is FULL_SHARD and the communicator
    /// gathers on a second stream ([`crate::dist::Communicator::gathers_ahead`]). Returns whether it is on.
    pub fn set_prefetch(&mut self, on: bool) -> bool {
        self.prefetch = on && self.mode == Sharding::Full && self.comm.gathers_ahead();
        self.prefetch
    }

    /// Whether units are gathered ahead of use.
    pub fn prefetches(&self) -> bool {
        self.prefetch
    }

    /// (units gathered ahead, of which used): the engine named the right next unit when they agree.
    pub fn prefetch_counts(&self) -> (u64, u64) {
        (
            self.prefetch_counts[0].load(Ordering::Relaxed),
            self.prefetch_counts[1].load(Ordering::Relaxed),
        )
    }

    pub(super) fn take_ahead(&self) -> Result<Option<Ahead>> {
        Ok(self
            .ahead
            .lock()
            .map_err(|_| anyhow::anyhow!("FSDP: a thread panicked while prefetching"))?
            .take())
    }

    /// Issues `unit`'s gathers on the second stream (nothing when prefetching is off).
    pub(super) fn gather_ahead(&self, unit: Unit) -> Result<()> {
        if !self.prefetch {
            return Ok(());
        }
        let u = self
            .units
            .get(&unit)
            .with_context(|| format!("FSDP has no unit {unit:?}"))?;
        let frozen = match &u.frozen {
            Some((_, shard)) => Some(self.comm.all_gather_ahead(&shard.flatten_all()?)?),
            None => None,
        };
        let trainable = u
            .trainable
            .iter()
            .map(|tb| {
                Ok(self
                    .comm
                    .all_gather_ahead(&tb.shard.tensor().flatten_all()?)?)
            })
            .collect::<Result<Vec<_>>>()?;
        let mut slot = self
            .ahead
            .lock()
            .map_err(|_| anyhow::anyhow!("FSDP: a thread panicked while prefetching"))?;
        *slot = Some(Ahead {
            unit,
            frozen,
            trainable,
        });
        self.prefetch_counts[0].fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The compute stream joins the gathers of `a`; its tensors by name (trainable ones cast to the
    /// compute dtype), as [`Fsdp::gather`] gives them.
    pub(super) fn unpack_ahead(&self, a: Ahead) -> Result<HashMap<String, Tensor>> {
        self.comm.join_ahead()?;
        self.prefetch_counts[1].fetch_add(1, Ordering::Relaxed);
        let u = self
            .units
            .get(&a.unit)
            .with_context(|| format!("FSDP has no unit {:?}", a.unit))?;
        let mut out = HashMap::new();
        if let (Some((b, _)), Some(full)) = (&u.frozen, &a.frozen) {
            out.extend(b.names.iter().cloned().zip(b.layout.unflatten(full)?));
        }
        for (tb, full) in u.trainable.iter().zip(&a.trainable) {
            for (n, t) in tb
                .bucket
                .names
                .iter()
                .cloned()
                .zip(tb.bucket.layout.unflatten(full)?)
            {
                out.insert(n, t.to_dtype(self.dtype)?);
            }
        }
        Ok(out)
    }

    /// A prefetched unit nobody asked for: joined (its buffers are freed on the compute stream, which
    /// must not reuse them while the second stream still writes), then dropped.
    pub(super) fn drop_ahead(&self, a: Ahead) -> Result<()> {
        self.comm.join_ahead()?;
        drop(a);
        Ok(())
    }
}
