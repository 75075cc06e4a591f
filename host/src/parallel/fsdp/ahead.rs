//! Prefetch: a unit's all-gather issued ahead of its use on the communicator's second stream
//! ([`crate::parallel::Communicator::all_gather_ahead`]), so the next unit's weights travel while the
//! current unit computes. The engine names the next unit ([`Fsdp::materialize_next`]); the gathered
//! flat vectors wait here until that unit is asked for, then the compute stream joins the second stream
//! and they are cut into tensors. A prefetched unit that is not asked for next is joined and dropped
//! (the gather was wasted, nothing else). One unit ahead at most: the memory of one more unit's
//! weights. Only under FULL_SHARD over a communicator with a second stream (NCCL); elsewhere
//! `materialize_next` gathers on demand as before.

use super::{Fsdp, Sharding, Unit};
use anyhow::Result;
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
    /// gathers on a second stream ([`crate::parallel::Communicator::gathers_ahead`]).
    pub fn set_prefetch(&mut self, on: bool) {
        self.prefetch = on && self.mode == Sharding::Full && self.comm.gathers_ahead();
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
        let (frozen, trainable) =
            self.unit_flats(unit, &|slice| Ok(self.comm.all_gather_ahead(slice)?))?;
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
        self.cut(a.unit, a.frozen.as_ref(), &a.trainable)
    }

    /// A prefetched unit nobody asked for: joined (its buffers are freed on the compute stream, which
    /// must not reuse them while the second stream still writes), then dropped.
    pub(super) fn drop_ahead(&self, a: Ahead) -> Result<()> {
        self.comm.join_ahead()?;
        drop(a);
        Ok(())
    }
}
