//! FSDP optimiser state: the shards' moments as the unsharded model's (checkpoints are written that
//! way) and back, cut to this rank's shards (resuming on any world size).

use super::Fsdp;
use crate::model::{ParamGroup, Transformer};
use crate::parallel::shard::{BucketEntry, ShardIndex};
use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use std::collections::HashMap;

impl Fsdp {
    /// A copy of `model` to save: on rank 0 its trained weights (`lora_only`: the LoRA factors, all a
    /// LoRA checkpoint stores; else every weight) gathered unit by unit and each moved to host memory
    /// as it arrives; on the other ranks (which take part in the gathers but write nothing) and for
    /// what is not gathered, the released weights. Neither the GPU nor any rank but 0 ever holds the
    /// whole model. A collective: every rank calls it.
    pub fn gather_for_saving(&self, model: &Transformer, lora_only: bool) -> Result<Transformer> {
        let keep = self.rank() == 0;
        let mut host: HashMap<String, Tensor> = HashMap::new();
        for u in self.units.values() {
            let parts = if lora_only {
                let mut out = Vec::new();
                for tb in u
                    .trainable
                    .iter()
                    .filter(|tb| tb.shard.group() == ParamGroup::Lora)
                {
                    for (n, t) in self.gather_bucket(&tb.bucket, tb.shard.tensor())? {
                        out.push((n, t.to_dtype(self.dtype)?));
                    }
                }
                out
            } else {
                self.gather(u.unit)?.into_iter().collect()
            };
            if keep {
                for (n, t) in parts {
                    host.insert(n, t.to_device(&candle_core::Device::Cpu)?);
                }
            }
        }
        super::with_weights(model, host)
    }

    /// The optimiser state of the shards (`<slot>.<key>` for each of `slots`, e.g. AdamW's `m.<key>` and
    /// `v.<key>`, as the training optimiser's `state()` gives it) as the state of the unsharded model
    /// (`<slot>.<name>` and, when the compute
    /// dtype is narrower than f32, `master.<name>` from the f32 shards): all-gathered bucket by bucket,
    /// each bucket copied to the host memory of rank 0 as soon as it arrives and dropped on the other
    /// ranks — the whole state (three f32 copies of the trainable weights: 84 GB for a 7B full
    /// fine-tune) never sits on a GPU. Rank 0 gets it whole, the others only the entries that pass
    /// through (the replicated value head's). A collective: every rank calls it.
    pub fn gather_optimizer_state(
        &self,
        mut state: HashMap<String, Tensor>,
        slots: &[&str],
    ) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        let keep = self.rank() == 0;
        let mut put = |name: String, t: Tensor| -> Result<()> {
            if keep {
                out.insert(name, t.to_device(&candle_core::Device::Cpu)?);
            }
            Ok(())
        };
        for tb in self.units.values().flat_map(|u| &u.trainable) {
            for moment in slots {
                // every rank updated the same buckets (they agree on which have gradients)
                if let Some(t) = state.remove(&format!("{moment}.{}", tb.key)) {
                    for (n, t) in self.gather_bucket(&tb.bucket, &t)? {
                        put(format!("{moment}.{n}"), t)?;
                    }
                }
            }
            if self.dtype != DType::F32 {
                for (n, t) in self.gather_bucket(&tb.bucket, tb.shard.tensor())? {
                    put(format!("master.{n}"), t)?;
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
    /// `slots` of each bucket's tensors cut to this rank's shard (`<slot>.<key>`); `master.*`
    /// entries of sharded tensors are dropped (the shards were made from them, see [`Fsdp::shard`]).
    /// A bucket whose tensors have no moments yet gets none.
    pub fn shard_optimizer_state(
        &self,
        mut state: HashMap<String, Tensor>,
        slots: &[&str],
    ) -> Result<HashMap<String, Tensor>> {
        let rank = self.slice;
        let mut out = HashMap::new();
        for tb in self.units.values().flat_map(|u| &u.trainable) {
            for moment in slots {
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

impl Fsdp {
    /// The layout of this sharding, for `shards/index.json`.
    pub fn shard_index(&self) -> ShardIndex {
        let buckets = self
            .units
            .values()
            .flat_map(|u| &u.trainable)
            .map(|tb| BucketEntry {
                key: tb.key.clone(),
                names: tb.bucket.names.clone(),
                shapes: tb
                    .bucket
                    .layout
                    .parts
                    .iter()
                    .map(|(s, _)| s.clone())
                    .collect(),
            })
            .collect();
        ShardIndex {
            slices: self
                .units
                .values()
                .flat_map(|u| &u.trainable)
                .next()
                .map_or(1, |tb| tb.bucket.layout.world),
            buckets,
        }
    }

    /// This rank's part of a per-rank checkpoint: its trainable slices (`shard.<key>`, f32) and their
    /// optimiser `slots` (`<slot>.<key>`, e.g. `m.`, `v.`) from the optimiser `state`, all 1-D; None when another rank writes
    /// the same slice (without sharding every rank holds everything: rank 0 writes).
    pub fn rank_tensors(
        &self,
        state: &HashMap<String, Tensor>,
        slots: &[&str],
    ) -> Result<Option<HashMap<String, Tensor>>> {
        if self.mode == super::Sharding::None && self.rank() != 0 {
            return Ok(None);
        }
        let mut out = HashMap::new();
        for tb in self.units.values().flat_map(|u| &u.trainable) {
            out.insert(
                format!("shard.{}", tb.key),
                tb.shard.tensor().flatten_all()?,
            );
            for moment in slots {
                if let Some(t) = state.get(&format!("{moment}.{}", tb.key)) {
                    out.insert(format!("{moment}.{}", tb.key), t.flatten_all()?);
                }
            }
        }
        Ok(Some(out))
    }
}

/// The unsharded trainable weights (f32, by name) and optimiser `slots` (`<slot>.<name>`, e.g. `m.`,
/// `v.`) from the files of a per-rank checkpoint, in slice order.
pub fn unshard_files(
    index: &ShardIndex,
    files: &[HashMap<String, Tensor>],
    slots: &[&str],
) -> Result<(HashMap<String, Tensor>, HashMap<String, Tensor>)> {
    if files.len() != index.slices {
        bail!(
            "the index names {} slices but {} files were read",
            index.slices,
            files.len()
        );
    }
    let (mut weights, mut state) = (HashMap::new(), HashMap::new());
    for b in &index.buckets {
        let layout = crate::parallel::shard::FlatLayout::new(&b.shapes, index.slices);
        if b.names.len() != b.shapes.len() {
            bail!(
                "bucket `{}`: {} names for {} shapes",
                b.key,
                b.names.len(),
                b.shapes.len()
            );
        }
        for what in std::iter::once("shard").chain(slots.iter().copied()) {
            let key = format!("{what}.{}", b.key);
            let parts: Vec<&Tensor> = files.iter().filter_map(|f| f.get(&key)).collect();
            if parts.is_empty() && what != "shard" {
                continue; // no moments yet
            }
            if parts.len() != files.len() {
                bail!(
                    "`{key}` is missing from {} of the {} files",
                    files.len() - parts.len(),
                    files.len()
                );
            }
            let parts: Vec<Tensor> = parts
                .into_iter()
                .map(|t| t.flatten_all()?.to_dtype(DType::F32))
                .collect::<candle_core::Result<_>>()?;
            let flat = Tensor::cat(&parts, 0)?;
            let tensors = layout
                .unflatten(&flat)
                .map_err(|e| anyhow::anyhow!("`{key}`: {e}"))?;
            for (n, t) in b.names.iter().zip(tensors) {
                match what {
                    "shard" => weights.insert(n.clone(), t),
                    m => state.insert(format!("{m}.{n}"), t),
                };
            }
        }
    }
    Ok((weights, state))
}
