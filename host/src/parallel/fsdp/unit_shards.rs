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

    /// Errors when a tensor that rank `rank`'s shard reads is a placeholder: a weight the shard-only
    /// init left undrawn (`train::shard_init`) must never reach a shard as zeros.
    fn check_initialised(&self, tensors: &[Tensor], rank: usize) -> Result<()> {
        for i in self.layout.parts_in_shard(rank) {
            if tensors
                .get(i)
                .is_some_and(crate::model::init::is_placeholder)
            {
                anyhow::bail!(
                    "FSDP: weight `{}` was never initialised (a placeholder of the shard-only \
                     init, but this rank's shard reads it)",
                    self.names[i]
                );
            }
        }
        Ok(())
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

/// How one unit's parameters split into flat buckets: the frozen ones (indices into the unit's
/// parameters, visiting order) and, per (group, decays) class, the trainable ones. Weight decay applies
/// to tensors of rank ≥ 2, as AdamW would apply it to the unit's matrices.
struct BucketPlan {
    frozen: Vec<usize>,
    trainable: BTreeMap<(ParamGroup, bool), Vec<usize>>,
}

impl BucketPlan {
    fn of(params: &[(String, Param)]) -> Self {
        let mut plan = BucketPlan {
            frozen: Vec::new(),
            trainable: BTreeMap::new(),
        };
        for (i, (_, p)) in params.iter().enumerate() {
            if p.is_trainable() {
                let decays = p.tensor().rank() >= 2;
                plan.trainable
                    .entry((p.group(), decays))
                    .or_default()
                    .push(i);
            } else {
                plan.frozen.push(i);
            }
        }
        plan
    }

    /// Every bucket's parameter indices, frozen first (when there are any).
    fn buckets(&self) -> impl Iterator<Item = &Vec<usize>> {
        std::iter::once(&self.frozen)
            .filter(|b| !b.is_empty())
            .chain(self.trainable.values())
    }
}

/// `params[i]` for each index of `idx`, by name (their current values).
fn named(params: &[(String, Param)], idx: &[usize]) -> Vec<(String, Tensor)> {
    idx.iter()
        .map(|&i| (params[i].0.clone(), params[i].1.tensor().clone()))
        .collect()
}

/// Names of the unit's parameters whose values rank `rank` of `world` keeps a piece of: the tensors
/// [`shard_unit`] reads (FSDP start-up draws only these for a random model).
pub(super) fn names_in_shard(
    params: &[(String, Param)],
    (world, rank): (usize, usize),
) -> Vec<String> {
    let mut out = Vec::new();
    for idx in BucketPlan::of(params).buckets() {
        let b = Bucket::new(&named(params, idx), world);
        out.extend(
            b.layout
                .parts_in_shard(rank)
                .into_iter()
                .map(|k| b.names[k].clone()),
        );
    }
    out
}

/// The bucket of `named` over `world` ranks and rank `rank`'s shard of it in `dtype` on `device`
/// (refusing placeholders, [`Bucket::check_initialised`]).
fn shard_bucket(
    named: &[(String, Tensor)],
    (world, rank): (usize, usize),
    dtype: DType,
    device: &candle_core::Device,
) -> Result<(Bucket, Tensor)> {
    let b = Bucket::new(named, world);
    let ts: Vec<Tensor> = named.iter().map(|(_, t)| t.clone()).collect();
    b.check_initialised(&ts, rank)?;
    let shard = b.layout.shard_as(&ts, rank, dtype)?.to_device(device)?;
    Ok((b, shard))
}

/// One unit's shards on `device`, this rank's (`place` = (world, rank)): its frozen parameters in one
/// bucket, its trainable ones in one f32 bucket per (group, decays) in visiting order (a resumed
/// optimiser's `masters` instead of the narrower weights where it has them). Only the pieces of this
/// rank's slice are read and converted ([`FlatLayout::shard_as`]).
pub(super) fn shard_unit(
    unit: Unit,
    params: &[(String, Param)],
    masters: &HashMap<String, Tensor>,
    (world, rank): (usize, usize),
    device: &candle_core::Device,
) -> Result<UnitShards> {
    let plan = BucketPlan::of(params);
    let frozen = match named(params, &plan.frozen) {
        f if f.is_empty() => None,
        f => Some(shard_bucket(&f, (world, rank), f[0].1.dtype(), device)?),
    };
    let mut trainable = Vec::new();
    for ((group, decays), idx) in &plan.trainable {
        let mut values = named(params, idx);
        for (n, v) in &mut values {
            if let Some(m) = masters.get(n).filter(|m| m.dims() == v.dims()) {
                *v = m.clone();
            }
        }
        let (b, flat) = shard_bucket(&values, (world, rank), DType::F32, device)?;
        let flat = if *decays { flat.unsqueeze(0)? } else { flat };
        trainable.push(TrainableBucket {
            key: format!(
                "fsdp.{}.{}.{}",
                unit.label(),
                group.name(),
                if *decays { "decay" } else { "no_decay" }
            ),
            bucket: b,
            shard: Param::trainable(flat, *group)?,
        });
    }
    Ok(UnitShards {
        unit,
        frozen,
        trainable,
    })
}
