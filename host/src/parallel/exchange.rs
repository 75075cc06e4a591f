//! Collectives built on one primitive, the exchange: every rank hands in a tensor and gets every rank's
//! tensor back, in rank order. The in-process group (local.rs) and the TCP group
//! (tcp.rs) implement it; each rank then computes its own result from the set, summing in rank
//! order, so all ranks agree bit for bit. (NCCL does the collectives itself and needs none of this.)

use super::Communicator;
use candle_core::{bail, DType, Result, Tensor};
use std::sync::Arc;

/// A group of ranks that can swap tensors.
pub trait Exchange: Send + Sync {
    /// (this rank, number of ranks).
    fn member(&self) -> (usize, usize);
    /// Hands in `x`, returns every rank's tensor in rank order once all have handed theirs in. `what`
    /// names the collective in errors.
    fn exchange(&self, x: &Tensor, what: &str) -> Result<Arc<Vec<Tensor>>>;
}

/// Σ of the ranks' tensors in rank order: in f64 for f64 tensors, else in f32, then back to the dtype.
fn sum(all: &[Tensor]) -> Result<Tensor> {
    let Some(first) = all.first() else {
        bail!("all_reduce_sum: no ranks");
    };
    let dt = first.dtype();
    let acc_dt = if dt == DType::F64 {
        DType::F64
    } else {
        DType::F32
    };
    let mut acc = first.to_dtype(acc_dt)?;
    for t in &all[1..] {
        if t.dims() != acc.dims() {
            bail!(
                "all_reduce_sum: ranks passed shapes {:?} and {:?}",
                acc.dims(),
                t.dims()
            );
        }
        acc = (acc + t.to_dtype(acc_dt)?)?;
    }
    acc.to_dtype(dt)
}

impl<E: Exchange> Communicator for E {
    fn rank(&self) -> usize {
        self.member().0
    }

    fn world_size(&self) -> usize {
        self.member().1
    }

    fn all_reduce_sum(&self, x: &Tensor) -> Result<Tensor> {
        let dev = x.device().clone();
        sum(&self.exchange(x, "all_reduce_sum")?)?.to_device(&dev)
    }

    fn all_gather(&self, shard: &Tensor) -> Result<Tensor> {
        let dev = shard.device().clone();
        let all = self.exchange(shard, "all_gather")?;
        if all
            .iter()
            .any(|t| t.dims() != all[0].dims() || t.rank() != 1)
        {
            bail!("all_gather: shards must be 1-D of one length");
        }
        Tensor::cat(&all, 0)?.to_device(&dev)
    }

    fn reduce_scatter_sum(&self, full: &Tensor) -> Result<Tensor> {
        let n = full.elem_count();
        let w = self.member().1;
        if full.rank() != 1 || !n.is_multiple_of(w) {
            bail!("reduce_scatter_sum: a 1-D tensor whose length ({n}) is a multiple of {w} is needed");
        }
        let dev = full.device().clone();
        let total = sum(&self.exchange(full, "reduce_scatter_sum")?)?;
        // own storage: a view would keep the whole sum alive (and upload all of it)
        total
            .narrow(0, self.member().0 * n / w, n / w)?
            .force_contiguous()?
            .to_device(&dev)
    }

    fn broadcast(&self, x: &Tensor, root: usize) -> Result<Tensor> {
        let w = self.member().1;
        if root >= w {
            bail!("broadcast: root {root} outside a group of {w}");
        }
        self.exchange(x, "broadcast")?[root].to_device(x.device())
    }

    fn barrier(&self) -> Result<()> {
        let empty = Tensor::zeros(0, DType::F32, &candle_core::Device::Cpu)?;
        self.exchange(&empty, "barrier").map(|_| ())
    }
}
