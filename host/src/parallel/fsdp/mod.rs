//! FSDP (FULL_SHARD) of the policy over a [`Communicator`]: the engine's units — the token embedding,
//! each block of `layers` (the trunk and head 0), each extra head, and the shared output (final norm +
//! vocabulary projection) — are each flattened and split over the ranks ([`FlatLayout`](super::shard::FlatLayout)).
//!
//! - Frozen weights: one flat vector per unit in the compute dtype; rank r keeps 1/W of it. This is where
//!   LoRA's memory saving under FSDP comes from: the base model is what is large.
//! - Trainable weights: flat f32 vectors per unit, split by optimiser group and by whether weight decay
//!   applies; these shards ARE the f32 master weights, and AdamW updates only the local shard.
//! - Before a unit runs (forward, and again when the backward recomputes or differentiates it), its
//!   shards are all-gathered into a copy of the unit ([`Fsdp::materialize`]); the copy is dropped after
//!   use. The model's own weights stay released (empty tensors, [`crate::model::Param::release`]).
//! - Right after a unit's backward its gradients are reduce-scattered into this rank's shard sums
//!   ([`Fsdp::reduce_scatter_unit`]), so full gradients exist for one unit at a time; at the end of the
//!   step the sums are the shard gradients ([`Fsdp::finish_grads`]); the global gradient norm is a sum
//!   of local squares, all-reduced; the mean over ranks (÷ W) and the clipping factor are one scale the
//!   optimiser applies as it reads each gradient (no scaled copies).
//!
//! Modules outside the units (the value head) stay replicated: their gradients are all-reduced.

use super::Communicator;
use crate::model::{Param, Transformer, VisitParams};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

mod ahead;
mod as_strategy;
mod grads;
pub mod state;
mod unit_shards;
mod update;

use unit_shards::{shard_unit, Bucket, TrainableBucket, UnitShards};

/// `[distributed] sharding`: what is split over the ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sharding {
    /// FULL_SHARD: weights, gradients and optimiser state split; each unit gathered right before it
    /// runs (forward, and again in the backward) and dropped after.
    #[default]
    Full,
    /// SHARD_GRAD_OP: gradients and optimiser state split; the weights gathered once per step (at the
    /// first unit that runs) and kept until the update — fewer gathers, the full weights in memory.
    GradOp,
    /// NO_SHARD: every rank keeps everything (data parallelism); gradients all-reduced.
    None,
}

pub use crate::model::Unit;

/// Shard gradients summed over a step's micro-batches, and which buckets got a gradient on this rank.
#[derive(Debug, Default)]
struct Pending {
    sums: HashMap<String, Tensor>,
    present: std::collections::HashSet<String>,
}

/// This rank's shards of the policy and the communicator that gathers them.
pub struct Fsdp {
    comm: Arc<dyn Communicator>,
    units: BTreeMap<Unit, UnitShards>,
    dtype: DType,
    pending: std::sync::Mutex<Pending>,
    mode: Sharding,
    /// The slice of each flat vector this rank keeps (0 under [`Sharding::None`]: the whole vector).
    slice: usize,
    /// [`Sharding::GradOp`]: the step's gathered weights by name, until the update.
    gathered: std::sync::Mutex<Option<HashMap<String, Tensor>>>,
    /// The unit gathered ahead of use, if any ([`Fsdp::materialize_next`]).
    ahead: std::sync::Mutex<Option<ahead::Ahead>>,
    /// Whether [`Fsdp::materialize_next`] gathers ahead (FULL_SHARD over a communicator that can).
    prefetch: bool,
    /// Units gathered ahead, and how many of them were used (the rest were asked for out of order).
    prefetch_counts: [std::sync::atomic::AtomicU64; 2],
}

impl std::fmt::Debug for Fsdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fsdp")
            .field("rank", &self.comm.rank())
            .field("world", &self.comm.world_size())
            .field("units", &self.units.len())
            .finish()
    }
}

/// The parameters `names` of `model` (clones: the values), each left in the model released (an empty
/// tensor on `device`), so the model's copy goes as soon as the caller drops what it took.
fn take_unit(
    model: &mut Transformer,
    names: &[String],
    device: &candle_core::Device,
) -> Result<Vec<(String, Param)>> {
    let wanted: std::collections::HashSet<&str> = names.iter().map(String::as_str).collect();
    let mut out = Vec::with_capacity(names.len());
    let mut res = Ok(());
    model.visit_mut("", &mut |name, p| {
        if res.is_ok() && wanted.contains(name) {
            out.push((name.to_string(), p.clone()));
            res = p.release_on(device);
        }
    });
    res?;
    Ok(out)
}

/// `f` of each of `model`'s parameters (name, parameter), grouped by FSDP unit, in visiting order.
fn by_unit<T>(
    model: &Transformer,
    mut f: impl FnMut(&str, &Param) -> T,
) -> Result<BTreeMap<Unit, Vec<T>>> {
    let mut by_unit: BTreeMap<Unit, Vec<T>> = BTreeMap::new();
    let mut err = None;
    model.visit("", &mut |name, p| match Unit::of(name) {
        Some(u) => by_unit.entry(u).or_default().push(f(name, p)),
        None => {
            err.get_or_insert(format!("parameter `{name}` belongs to no FSDP unit"));
        }
    });
    match err {
        Some(e) => bail!(e),
        None => Ok(by_unit),
    }
}

/// The names of the weights whose values rank `rank` of `world` keeps a piece of when [`Fsdp::shard`]
/// shards `model` as `mode` says (all of them under [`Sharding::None`]). The model's trainable flags
/// must be set as they will be at sharding: they decide the buckets. A rank's shards read no other
/// weight, so a random model's start-up draws only these (`model::init::random_weights_where`).
pub fn names_in_shard(
    model: &Transformer,
    mode: Sharding,
    (world, rank): (usize, usize),
) -> Result<std::collections::HashSet<String>> {
    let place = match mode {
        Sharding::None => (1, 0),
        _ => (world, rank),
    };
    let units = by_unit(model, |name, p| (name.to_string(), p.clone()))?;
    Ok(units
        .values()
        .flat_map(|params| unit_shards::names_in_shard(params, place))
        .collect())
}

/// A copy of `model` whose weights named in `weights` are replaced by them (the others as they are).
fn with_weights(model: &Transformer, mut weights: HashMap<String, Tensor>) -> Result<Transformer> {
    let mut copy = model.clone();
    let mut err = None;
    copy.visit_mut("", &mut |name, p| {
        if let Some(t) = weights.remove(name) {
            if let Err(e) = p.replace(t) {
                err.get_or_insert(e);
            }
        }
    });
    err.map_or(Ok(copy), Err)
}

impl Fsdp {
    /// Shards `model` over the group of `comm` as `mode` says and releases the model's own weights.
    /// Every rank must call it with the same model (same weights: same init seed or same checkpoint).
    /// `masters`: f32 master copies by parameter name (a resumed optimiser's), used for the trainable
    /// shards instead of the model's narrower weights. The shards are put on `device` (the model may
    /// sit in host memory: only this rank's slices are uploaded), and unit by unit, each unit's weights
    /// are released as soon as its shards exist, so memory never holds the model and all its shards.
    pub fn shard(
        model: &mut Transformer,
        comm: Arc<dyn Communicator>,
        masters: &HashMap<String, Tensor>,
        mode: Sharding,
        device: &candle_core::Device,
    ) -> Result<Self> {
        // NO_SHARD: layouts over one rank, every rank holding the whole of each flat vector
        let (world, rank) = match mode {
            Sharding::None => (1, 0),
            _ => (comm.world_size(), comm.rank()),
        };
        let dtype = model.dtype();
        let by_unit = by_unit(model, |name, _| name.to_string())?;
        let mut units = BTreeMap::new();
        for (unit, names) in by_unit {
            let params = take_unit(model, &names, device)?;
            let shards = shard_unit(unit, &params, masters, (world, rank), device)?;
            units.insert(unit, shards);
        }
        Ok(Fsdp {
            comm,
            units,
            dtype,
            pending: Default::default(),
            mode,
            slice: rank,
            gathered: Default::default(),
            ahead: Default::default(),
            prefetch: false,
            prefetch_counts: Default::default(),
        })
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    /// Ranks in the group.
    pub fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    /// The communicator.
    pub fn comm(&self) -> &Arc<dyn Communicator> {
        &self.comm
    }

    /// The full weights of `unit` by checkpoint name (all-gathered; trainable ones from their f32
    /// shards, cast to the compute dtype). A collective: every rank must gather the same units in the
    /// same order.
    pub fn gather(&self, unit: Unit) -> Result<HashMap<String, Tensor>> {
        let (frozen, trainable) = self.unit_flats(unit, &|slice| self.gather_flat(slice))?;
        self.cut(unit, frozen.as_ref(), &trainable)
    }

    /// `f` of each of `unit`'s flat shards (1-D): the frozen bucket's, then the trainable ones in order.
    fn unit_flats(
        &self,
        unit: Unit,
        f: &dyn Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<(Option<Tensor>, Vec<Tensor>)> {
        let u = self
            .units
            .get(&unit)
            .with_context(|| format!("FSDP has no unit {unit:?}"))?;
        let frozen = match &u.frozen {
            Some((_, shard)) => Some(f(&shard.flatten_all()?)?),
            None => None,
        };
        let trainable = u
            .trainable
            .iter()
            .map(|tb| f(&tb.shard.tensor().flatten_all()?))
            .collect::<Result<Vec<_>>>()?;
        Ok((frozen, trainable))
    }

    /// `unit`'s tensors by name from its gathered flat vectors ([`Fsdp::unit_flats`] order), the
    /// trainable ones cast to the compute dtype.
    fn cut(
        &self,
        unit: Unit,
        frozen: Option<&Tensor>,
        trainable: &[Tensor],
    ) -> Result<HashMap<String, Tensor>> {
        let u = self
            .units
            .get(&unit)
            .with_context(|| format!("FSDP has no unit {unit:?}"))?;
        let mut out = HashMap::new();
        if let (Some((b, _)), Some(full)) = (&u.frozen, frozen) {
            out.extend(b.names.iter().cloned().zip(b.layout.unflatten(full)?));
        }
        for (tb, full) in u.trainable.iter().zip(trainable) {
            for (n, t) in tb
                .bucket
                .names
                .iter()
                .zip(tb.bucket.layout.unflatten(full)?)
            {
                out.insert(n.clone(), t.to_dtype(self.dtype)?);
            }
        }
        Ok(out)
    }

    /// `bucket`'s tensors by name from this rank's `slice` of its flat vector (any shape; gathered).
    fn gather_bucket(&self, bucket: &Bucket, slice: &Tensor) -> Result<Vec<(String, Tensor)>> {
        let full = self.gather_flat(&slice.flatten_all()?)?;
        Ok(bucket
            .names
            .iter()
            .cloned()
            .zip(bucket.layout.unflatten(&full)?)
            .collect())
    }

    /// A copy of `model` whose `units` hold their full weights (gathered); every other weight stays
    /// released. Drop it after use to free the gathered weights.
    ///
    /// Under [`Sharding::GradOp`] the first call of a step gathers every unit and keeps them until
    /// [`Fsdp::weights_changed`]; later calls copy from there without communicating.
    pub fn materialize(&self, model: &Transformer, units: &[Unit]) -> Result<Transformer> {
        self.materialize_next(model, units, None)
    }

    /// [`Fsdp::materialize`], then, when prefetching is on ([`Fsdp::set_prefetch`]), the gather of
    /// `next` — the unit the caller will ask for next — issued on the communicator's second stream,
    /// to run while the caller computes with the units returned now. Every rank must pass the same
    /// `next` (it is a collective too).
    pub fn materialize_next(
        &self,
        model: &Transformer,
        units: &[Unit],
        next: Option<Unit>,
    ) -> Result<Transformer> {
        let mut full = HashMap::new();
        if self.mode == Sharding::GradOp {
            let mut g = self
                .gathered
                .lock()
                .map_err(|_| anyhow::anyhow!("FSDP: a thread panicked while gathering"))?;
            if g.is_none() {
                let mut all = HashMap::new();
                for &u in self.units.keys() {
                    all.extend(self.gather(u)?);
                }
                *g = Some(all);
            }
            let all: &HashMap<String, Tensor> = match g.as_ref() {
                Some(all) => all,
                None => bail!("FSDP: the step's gathered weights are missing"),
            };
            for &u in units {
                for name in self
                    .units
                    .get(&u)
                    .map(UnitShards::names)
                    .unwrap_or_default()
                {
                    if let Some(t) = all.get(&name) {
                        full.insert(name, t.clone());
                    }
                }
            }
        } else {
            let mut ahead = self.take_ahead()?;
            for &u in units {
                match ahead.take_if(|a| a.unit() == u) {
                    Some(a) => full.extend(self.unpack_ahead(a)?),
                    None => full.extend(self.gather(u)?),
                }
            }
            if let Some(unused) = ahead {
                self.drop_ahead(unused)?;
            }
            if let Some(n) = next {
                self.gather_ahead(n)?;
            }
        }
        with_weights(model, full)
    }

    /// The shards were updated: weights gathered for the step ([`Sharding::GradOp`]) are stale.
    pub fn weights_changed(&self) {
        if let Ok(mut g) = self.gathered.lock() {
            *g = None;
        }
    }

    /// Drops a unit gathered ahead and not used (its weights may be about to change): a collective-free
    /// wait for its gather, then the buffers go. Call it before updating the shards.
    pub fn settle(&self) -> Result<()> {
        match self.take_ahead()? {
            Some(a) => self.drop_ahead(a),
            None => Ok(()),
        }
    }

    /// How the policy is split.
    pub fn mode(&self) -> Sharding {
        self.mode
    }

    /// A unit's flat vector from this rank's slice: all-gathered, or the slice itself when every rank
    /// holds the whole vector ([`Sharding::None`]).
    fn gather_flat(&self, shard: &Tensor) -> Result<Tensor> {
        Ok(match self.mode {
            Sharding::None => shard.clone(),
            _ => self.comm.all_gather(shard)?,
        })
    }

    /// Every unit gathered: the whole model, e.g. to save a checkpoint or to evaluate.
    pub fn materialize_all(&self, model: &Transformer) -> Result<Transformer> {
        let units: Vec<Unit> = self.units.keys().copied().collect();
        self.materialize(model, &units)
    }

    /// The device the shards live on.
    fn device(&self) -> candle_core::Device {
        self.units
            .values()
            .flat_map(|u| {
                u.frozen
                    .as_ref()
                    .map(|(_, t)| t.device().clone())
                    .or_else(|| {
                        u.trainable
                            .first()
                            .map(|tb| tb.shard.tensor().device().clone())
                    })
            })
            .next()
            .unwrap_or(candle_core::Device::Cpu)
    }

    /// (all, trainable) parameters of the whole policy (not this rank's share), from the layouts.
    pub fn param_counts(&self) -> (u64, u64) {
        let (mut total, mut trainable) = (0u64, 0u64);
        for u in self.units.values() {
            if let Some((b, _)) = &u.frozen {
                total += b.layout.numel as u64;
            }
            for tb in &u.trainable {
                total += tb.bucket.layout.numel as u64;
                trainable += tb.bucket.layout.numel as u64;
            }
        }
        (total, trainable)
    }

    /// Bytes of this rank's shards: (frozen, trainable).
    pub fn shard_bytes(&self) -> (usize, usize) {
        let (mut frozen, mut trainable) = (0, 0);
        for u in self.units.values() {
            if let Some((_, t)) = &u.frozen {
                frozen += t.elem_count() * t.dtype().size_in_bytes();
            }
            for tb in &u.trainable {
                let t = tb.shard.tensor();
                trainable += t.elem_count() * t.dtype().size_in_bytes();
            }
        }
        (frozen, trainable)
    }

    /// The units, in engine order.
    pub fn units(&self) -> impl Iterator<Item = Unit> + '_ {
        self.units.values().map(|u| u.unit)
    }
}

/// The trainable shards, named `fsdp.<unit>.<group>.<decay|no_decay>`: what the optimiser updates.
impl VisitParams for Fsdp {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param)) {
        for u in self.units.values() {
            for tb in &u.trainable {
                f(&format!("{prefix}{}", tb.key), &tb.shard);
            }
        }
    }

    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param)) {
        for u in self.units.values_mut() {
            for tb in &mut u.trainable {
                f(&format!("{prefix}{}", tb.key), &mut tb.shard);
            }
        }
    }
}
