//! One FSDP unit's shards on this rank: its parameters flattened into buckets ([`Bucket`]: names in
//! visiting order and the [`FlatLayout`]), frozen weights in the compute dtype, trainable ones as f32
//! shards per optimiser group and decay class ([`TrainableBucket`]), and how a unit is sharded
//! ([`shard_unit`]).

use super::super::shard::FlatLayout;
use crate::model::{Param, ParamGroup, Unit};
use anyhow::Result;
use candle_core::{DType, Tensor};
use std::collections::{BTreeMap, HashMap};

/// Parameters of one unit flattened together: their names in visiting order and the layout.
#[derive(Debug, Clone)]
pub(super) struct Bucket {
    pub(super) names: Vec<String>,
    pub(super) layout: FlatLayout,
}

impl Bucket {
    pub(super) fn new(params: &[(String, Tensor)], world: usize) -> Self {
        let shapes: Vec<Vec<usize>> = params.iter().map(|(_, t)| t.dims().to_vec()).collect();
        Bucket {
            names: params.iter().map(|(n, _)| n.clone()).collect(),
            layout: FlatLayout::new(&shapes, world),
        }
    }
}

/// A unit's trainable parameters of one optimiser group and decay class: the f32 shard is a trainable
/// [`Param`] the optimiser updates. Its shape carries the decay class: [1, n] when weight decay applies
/// (AdamW decays tensors of rank ≥ 2, as it would the unit's matrices), [n] when it does not (vectors).
#[derive(Debug, Clone)]
pub(super) struct TrainableBucket {
    pub(super) key: String,
    pub(super) bucket: Bucket,
    pub(super) shard: Param,
}

/// The shards of one unit on this rank.
#[derive(Debug, Clone)]
pub(super) struct UnitShards {
    pub(super) unit: Unit,
    /// Frozen weights, compute dtype (None when the unit has none).
    pub(super) frozen: Option<(Bucket, Tensor)>,
    /// Trainable weights, one f32 bucket per (group, decay class).
    pub(super) trainable: Vec<TrainableBucket>,
}

impl UnitShards {
    /// Names of all the unit's weights.
    pub(super) fn names(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .frozen
            .iter()
            .flat_map(|(b, _)| b.names.clone())
            .collect();
        for tb in &self.trainable {
            out.extend(tb.bucket.names.iter().cloned());
        }
        out
    }
}

/// One unit's shards on `device`, this rank's (`place` = (world, rank)): its frozen parameters in one
/// bucket, its trainable ones in one f32 bucket per (group, decays) in visiting order (a resumed
/// optimiser's `masters` instead of the narrower weights where it has them).
pub(super) fn shard_unit(
    unit: Unit,
    params: &[(String, Param)],
    masters: &HashMap<String, Tensor>,
    (world, rank): (usize, usize),
    device: &candle_core::Device,
) -> Result<UnitShards> {
    let frozen: Vec<(String, Tensor)> = params
        .iter()
        .filter(|(_, p)| !p.is_trainable())
        .map(|(n, p)| (n.clone(), p.tensor().clone()))
        .collect();
    let frozen = if frozen.is_empty() {
        None
    } else {
        let b = Bucket::new(&frozen, world);
        let ts: Vec<Tensor> = frozen.iter().map(|(_, t)| t.clone()).collect();
        let shard = b.layout.shard(&ts, rank)?.to_device(device)?;
        Some((b, shard))
    };
    let mut classes: BTreeMap<(ParamGroup, bool), Vec<(String, Tensor)>> = BTreeMap::new();
    for (n, p) in params.iter().filter(|(_, p)| p.is_trainable()) {
        let decays = p.tensor().rank() >= 2;
        let value = match masters.get(n) {
            Some(m) if m.dims() == p.tensor().dims() => m.to_dtype(DType::F32)?,
            _ => p.tensor().to_dtype(DType::F32)?,
        };
        classes
            .entry((p.group(), decays))
            .or_default()
            .push((n.clone(), value));
    }
    let mut trainable = Vec::new();
    for ((group, decays), ps) in classes {
        let b = Bucket::new(&ps, world);
        let ts: Vec<Tensor> = ps.iter().map(|(_, t)| t.clone()).collect();
        let flat = b.layout.shard(&ts, rank)?.to_device(device)?;
        let flat = if decays { flat.unsqueeze(0)? } else { flat };
        trainable.push(TrainableBucket {
            key: format!(
                "fsdp.{}.{}.{}",
                unit.label(),
                group.name(),
                if decays { "decay" } else { "no_decay" }
            ),
            bucket: b,
            shard: Param::trainable(flat, group)?,
        });
    }
    Ok(UnitShards {
        unit,
        frozen,
        trainable,
    })
}
