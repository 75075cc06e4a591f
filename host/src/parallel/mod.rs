//! Collective communication for sharded training: the [`Communicator`] trait that FSDP ([`fsdp`]) and
//! the plugins' `all-reduce-sum` (`train::plugin_ranks`) use, a one-rank identity ([`Single`]) and an
//! in-process group of threads ([`local::group`], what the CPU tests of sharded training run on).
//!
//! Conventions: collectives work on 1-D tensors (flattened parameter shards); every rank calls the same
//! collectives in the same order; sums are taken in rank order, so every rank gets bit-identical results.

pub mod exchange;
pub mod fsdp;
pub mod launch;
pub mod local;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod shard;
pub mod strategy;
pub mod tcp;

use candle_core::{Result, Tensor};

/// The collectives FSDP needs. Every method is a collective: all ranks of the group must call it.
pub trait Communicator: Send + Sync {
    /// This rank, 0-based.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn world_size(&self) -> usize;
    /// Σ over ranks of `x` (same shape everywhere), returned on every rank.
    fn all_reduce_sum(&self, x: &Tensor) -> Result<Tensor>;
    /// The ranks' 1-D shards (same length everywhere) concatenated in rank order.
    fn all_gather(&self, shard: &Tensor) -> Result<Tensor>;
    /// Σ over ranks of the 1-D `full` (length a multiple of the world size), this rank's slice of it:
    /// elements [rank·n/W, (rank+1)·n/W).
    fn reduce_scatter_sum(&self, full: &Tensor) -> Result<Tensor>;
    /// `x` of rank `root`, on every rank (the others' `x` gives only shape and dtype).
    fn broadcast(&self, x: &Tensor, root: usize) -> Result<Tensor>;
    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<()>;
    /// Whether [`Communicator::all_gather_ahead`] overlaps with compute (NCCL: a second CUDA stream).
    /// FSDP prefetches the next unit's weights only then.
    fn gathers_ahead(&self) -> bool {
        false
    }
    /// [`Communicator::all_gather`] issued on a second stream behind the work queued so far, so that
    /// it runs while the caller computes: the result must not be read (nor `shard` changed) before
    /// [`Communicator::join_ahead`]. Without a second stream it is the plain gather.
    fn all_gather_ahead(&self, shard: &Tensor) -> Result<Tensor> {
        self.all_gather(shard)
    }
    /// Makes the work queued from now on wait for every [`Communicator::all_gather_ahead`] issued so far.
    fn join_ahead(&self) -> Result<()> {
        Ok(())
    }
}

/// The group of one: every collective is the identity.
#[derive(Debug, Default, Clone, Copy)]
pub struct Single;

impl Communicator for Single {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.clone())
    }
    fn all_gather(&self, shard: &Tensor) -> Result<Tensor> {
        Ok(shard.clone())
    }
    fn reduce_scatter_sum(&self, full: &Tensor) -> Result<Tensor> {
        Ok(full.clone())
    }
    fn broadcast(&self, x: &Tensor, _root: usize) -> Result<Tensor> {
        Ok(x.clone())
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
}
