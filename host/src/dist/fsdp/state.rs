//! FSDP optimiser state: the shards' moments as the unsharded model's (checkpoints are written that
//! way) and back, cut to this rank's shards (resuming on any world size).

use super::Fsdp;
use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use std::collections::HashMap;

impl Fsdp {
    /// The optimiser state of the shards (`m.<key>`, `v.<key>`, as [`crate::train::optim::AdamW::state`]
    /// gives it) as the state of the unsharded model (`m.<name>`, `v.<name>` and, when the compute
    /// dtype is narrower than f32, `master.<name>` from the f32 shards): all-gathered, so every rank gets
    /// it whole. Other entries (the replicated value head's) pass through. A collective.
    pub fn gather_optimizer_state(
        &self,
        mut state: HashMap<String, Tensor>,
    ) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for tb in self.units.values().flat_map(|u| &u.trainable) {
            for moment in ["m", "v"] {
                // every rank updated the same buckets (they agree on which have gradients)
                if let Some(t) = state.remove(&format!("{moment}.{}", tb.key)) {
                    let full = self.gather_flat(&t.flatten_all()?)?;
                    for (n, t) in tb
                        .bucket
                        .names
                        .iter()
                        .zip(tb.bucket.layout.unflatten(&full)?)
                    {
                        out.insert(format!("{moment}.{n}"), t);
                    }
                }
            }
            if self.dtype != DType::F32 {
                let full = self.gather_flat(&tb.shard.tensor().flatten_all()?)?;
                for (n, t) in tb
                    .bucket
                    .names
                    .iter()
                    .zip(tb.bucket.layout.unflatten(&full)?)
                {
                    out.insert(format!("master.{n}"), t);
                }
            }
        }
        for (k, t) in state {
            if k.contains("fsdp.") {
                bail!("optimiser state `{k}` matches no FSDP bucket");
            }
            out.insert(k, t);
        }
        Ok(out)
    }

    /// The reverse of [`Fsdp::gather_optimizer_state`], without communication: the unsharded state's
    /// moments of each bucket's tensors cut to this rank's shard (`m.<key>`, `v.<key>`); `master.*`
    /// entries of sharded tensors are dropped (the shards were made from them, see [`Fsdp::shard`]).
    /// A bucket whose tensors have no moments yet gets none.
    pub fn shard_optimizer_state(
        &self,
        mut state: HashMap<String, Tensor>,
    ) -> Result<HashMap<String, Tensor>> {
        let rank = self.slice;
        let mut out = HashMap::new();
        for tb in self.units.values().flat_map(|u| &u.trainable) {
            for moment in ["m", "v"] {
                let keys: Vec<String> = tb
                    .bucket
                    .names
                    .iter()
                    .map(|n| format!("{moment}.{n}"))
                    .collect();
                let found: Vec<Option<Tensor>> = keys.iter().map(|k| state.remove(k)).collect();
                if found.iter().all(Option::is_none) {
                    continue;
                }
                let parts: Vec<Tensor> = found
                    .into_iter()
                    .zip(&tb.bucket.layout.parts)
                    .map(|(t, (shape, _))| match t {
                        Some(t) => t.to_dtype(DType::F32)?.reshape(shape.as_slice()),
                        None => Tensor::zeros(shape.as_slice(), DType::F32, &self.device()),
                    })
                    .collect::<candle_core::Result<_>>()?;
                let mine = tb.bucket.layout.shard(&parts, rank)?;
                let mine = mine
                    .to_device(tb.shard.tensor().device())?
                    .reshape(tb.shard.tensor().dims())?;
                out.insert(format!("{moment}.{}", tb.key), mine);
            }
            for n in &tb.bucket.names {
                state.remove(&format!("master.{n}"));
            }
        }
        out.extend(state);
        Ok(out)
    }
}
