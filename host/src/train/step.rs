//! One optimizer step and one validation pass: micro-batches through the engine, the pipeline's
//! coefficients (a plugin, or the native baseline used for the automatic reference stage), gradient
//! accumulation, clipping, the optimiser's update, and the plugin's after-step.

use super::config::ActivationCheckpointing;
use super::engine::{Engine, ForwardState};
use crate::data::batcher::{collate, Batcher};
use crate::data::MicroBatch;
use crate::model::grads::Grads;
use crate::model::{Transformer, ValueHead};
use crate::optim::Optimizer;
use crate::parallel::strategy::{NoSharding, Replicated, Strategy};
use anyhow::Result;
use std::time::Instant;
use wmtp_plugin_host::{Batch, Coefficients, InputKind, Manifest, Plugin};

/// What turns per-token scalars into coefficients: a pipeline plugin, or the native baseline that the
/// automatic reference stage trains with. The session owns one and checkpoints its state.
pub trait Weigher {
    /// The pipeline's manifest (name, needed inputs, trained groups).
    fn manifest(&self) -> &Manifest;
    /// Coefficients for one micro-batch.
    fn weigh(&mut self, b: &Batch, train: bool) -> Result<Coefficients>;
    /// After each optimizer step.
    fn after_step(&mut self, step: u64) -> Result<()>;
    /// State to checkpoint.
    fn save_state(&mut self) -> Result<Vec<u8>>;
    /// Restores [`Weigher::save_state`]'s bytes.
    fn load_state(&mut self, state: &[u8]) -> Result<()>;
    /// Whether batches must carry input `k`.
    fn needs(&self, k: InputKind) -> bool {
        self.manifest().needs.contains(&k)
    }
    /// Hex SHA-256 of the plugin code that runs (None for a native pipeline).
    fn code_sha256(&self) -> Option<&str> {
        None
    }
}

impl Weigher for Plugin {
    fn manifest(&self) -> &Manifest {
        Plugin::manifest(self)
    }
    fn weigh(&mut self, b: &Batch, train: bool) -> Result<Coefficients> {
        Plugin::weigh(self, b, train)
    }
    fn after_step(&mut self, step: u64) -> Result<()> {
        Plugin::after_step(self, step)
    }
    fn save_state(&mut self) -> Result<Vec<u8>> {
        Plugin::save_state(self)
    }
    fn load_state(&mut self, state: &[u8]) -> Result<()> {
        Plugin::load_state(self, state)
    }
    fn code_sha256(&self) -> Option<&str> {
        Some(self.sha256())
    }
}

/// The baseline loss computed natively, c = M / (n_k · H_valid) (the automatic reference stage's
/// pipeline: it needs no plugin).
pub struct NativeBaseline {
    manifest: Manifest,
}

impl Default for NativeBaseline {
    fn default() -> Self {
        NativeBaseline {
            manifest: Manifest {
                name: "native-baseline".into(),
                version: "0.1.0".into(),
                description: "plain MTP cross-entropy, computed by the host".into(),
                needs: vec![],
                trains: vec![
                    wmtp_plugin_host::ParamGroup::Trunk,
                    wmtp_plugin_host::ParamGroup::Heads,
                ],
                uses_ce: true,
                uses_values_grad: false,
                config_keys: vec![],
            },
        }
    }
}

impl Weigher for NativeBaseline {
    fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    fn weigh(&mut self, b: &Batch, _train: bool) -> Result<Coefficients> {
        let h = b.heads as usize;
        let mut n = vec![0f64; h];
        for (i, &m) in b.ce_mask.iter().enumerate() {
            n[i % h] += m as f64;
        }
        let used = n.iter().filter(|&&c| c > 0.0).count() as f64;
        let mut loss = 0.0;
        let ce: Vec<f32> = b
            .ce_mask
            .iter()
            .enumerate()
            .map(|(i, &m)| {
                if m == 0 {
                    return 0.0;
                }
                let c = 1.0 / (n[i % h] * used);
                loss += c * b.ce[i] as f64;
                c as f32
            })
            .collect();
        Ok(Coefficients {
            ce,
            values: None,
            loss,
            metrics: vec![],
        })
    }
    fn after_step(&mut self, _step: u64) -> Result<()> {
        Ok(())
    }
    fn save_state(&mut self) -> Result<Vec<u8>> {
        Ok(vec![])
    }
    fn load_state(&mut self, _state: &[u8]) -> Result<()> {
        Ok(())
    }
}

/// The models a step runs.
pub struct Models<'a> {
    /// Policy.
    pub model: &'a Transformer,
    /// Value head.
    pub value_head: Option<&'a ValueHead>,
    /// Frozen reference.
    pub reference: Option<&'a Transformer>,
    /// Frozen critic (model and value head) supplying the values, when configured.
    pub critic: Option<(&'a Transformer, &'a ValueHead)>,
    /// Rows per vocabulary chunk.
    pub chunk_rows: usize,
    /// What a training forward keeps for the backward (`runtime.activation_checkpointing`); evaluation
    /// keeps nothing.
    pub checkpointing: ActivationCheckpointing,
    /// With "selective": how many blocks keep the selective set (`runtime.selective_blocks`; None: all).
    pub selective_blocks: Option<usize>,
    /// How the step spreads over ranks (FSDP, or [`NoSharding`]).
    pub strategy: &'a dyn Strategy,
    /// `training.detach_extra_heads` (see [`Engine::detach_extra_heads`]).
    pub detach_extra_heads: bool,
}

/// Forward of one micro-batch and the plugin batch built from it.
pub fn forward_and_batch<'a>(
    m: &Models<'a>,
    w: &dyn Weigher,
    mb: &MicroBatch,
    step: u64,
    seed: u64,
    train: bool,
) -> Result<(Engine<'a>, ForwardState, Batch)> {
    let engine = Engine {
        model: m.model,
        value_head: m.value_head,
        chunk_rows: m.chunk_rows,
        seed,
        train,
        checkpointing: if train {
            m.checkpointing
        } else {
            ActivationCheckpointing::Blocks
        },
        selective_blocks: m.selective_blocks,
        strategy: m.strategy,
        detach_extra_heads: m.detach_extra_heads,
    };
    let st = engine.forward(mb)?;
    let (b, t, h) = st.shape;
    let ref_ce = match (w.needs(InputKind::Reference), m.reference) {
        (true, Some(r)) => {
            let re = Engine {
                model: r,
                value_head: None,
                chunk_rows: m.chunk_rows,
                seed,
                train: false,
                checkpointing: ActivationCheckpointing::Blocks,
                selective_blocks: None,
                strategy: &NoSharding,
                detach_extra_heads: false,
            };
            let rs = re.forward(mb)?;
            let hr = rs.shape.2;
            Some((0..b * t).map(|i| rs.ce[i * hr]).collect())
        }
        _ => None,
    };
    let batch = Batch {
        sequences: b as u32,
        positions: t as u32,
        heads: h as u32,
        step,
        ce: st.ce.clone(),
        ce_mask: st.ce_mask.clone(),
        target_mask: mb.target_mask.clone(),
        values: match (w.needs(InputKind::Values), m.critic) {
            (true, Some((cm, cv))) => Some(super::engine::critic_values(cm, cv, mb)?),
            (true, None) => st.values.clone(),
            (false, _) => None,
        },
        ref_ce,
        rewards: if w.needs(InputKind::Rewards) {
            mb.rewards.clone()
        } else {
            None
        },
        pair_ids: if w.needs(InputKind::Pairs) {
            Some(mb.pair_ids.clone().unwrap_or_else(|| vec![-1; b]))
        } else {
            None
        },
        // the forward already read the ids to the host: no second copy from the device
        tokens: w.needs(InputKind::Tokens).then(|| st.tokens().to_vec()),
    };
    Ok((engine, st, batch))
}

/// What one optimizer step reports.
#[derive(Debug, Clone, Default)]
pub struct StepReport {
    /// Mean pipeline loss over micro-batches.
    pub loss: f64,
    /// Mean unweighted CE (per-head mean over valid tokens, averaged over heads).
    pub ce: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// The gradient norm was not finite: the update was skipped (weights and optimiser moments unchanged;
    /// the schedule and the pipeline still advance a step).
    pub skipped: bool,
    /// Learning rate used (peak lr × schedule).
    pub lr: f64,
    /// Trained tokens (Σ m).
    pub tokens: usize,
    /// Plugin metrics averaged over micro-batches.
    pub metrics: Vec<(String, f64)>,
    /// Where the step's wall-clock time went.
    pub times: PhaseTimes,
}

/// Wall-clock seconds of one optimizer step by phase, summed over its micro-batches. The device is
/// synchronised at each phase boundary, so GPU work is charged to the phase that queued it.
#[derive(Debug, Clone, Copy, Default)]
pub struct PhaseTimes {
    /// Forward passes (policy, reference, critic) and the per-token scalars' copy to the host.
    pub forward: f64,
    /// The pipeline's `weigh` calls.
    pub plugin: f64,
    /// Backward passes (recomputation included).
    pub backward: f64,
    /// Clipping, the optimiser update and the pipeline's after-step.
    pub optimizer: f64,
}

/// Seconds since `*since` once the device has finished its queued work; restarts the clock.
fn lap(dev: &candle_core::Device, since: &mut Instant) -> Result<f64> {
    dev.synchronize()?;
    let now = Instant::now();
    let s = now.duration_since(*since).as_secs_f64();
    *since = now;
    Ok(s)
}

/// Adds `weight` × each plugin metric of one call into `sums` by name, new names appended in first-seen
/// order (the plugin host caps a call at MAX_METRICS names, so the linear search stays cheap).
pub fn add_metrics(sums: &mut Vec<(String, f64)>, metrics: &[(String, f64)], weight: f64) {
    for (k, x) in metrics {
        match sums.iter_mut().find(|(name, _)| name == k) {
            Some(e) => e.1 += weight * x,
            None => sums.push((k.clone(), weight * x)),
        }
    }
}

/// This rank's next micro-batch of the one sample stream: the stream's next W, of which rank r takes the
/// r-th (so W ranks see what one rank drawing W in turn would).
fn draw_for_rank(
    batcher: &mut Batcher,
    rank: usize,
    world: usize,
) -> Result<(Vec<crate::data::dataset::Sample>, Option<Vec<i32>>)> {
    let mut drawn = None;
    for r in 0..world {
        let s = batcher.next_samples();
        if r == rank {
            drawn = Some(s);
        }
    }
    drawn.ok_or_else(|| anyhow::anyhow!("rank {rank} of {world} drew no micro-batch"))
}

/// The micro-batches of one optimizer step: forward, coefficients (scaled 1/accum), backward into
/// `grads`. The models are only read here; [`apply`] updates them afterwards.
#[allow(clippy::too_many_arguments)]
pub fn accumulate(
    m: &Models,
    w: &mut dyn Weigher,
    batcher: &mut Batcher,
    accum: usize,
    step: u64,
    seed: u64,
    pad: u32,
    grads: &mut Grads,
) -> Result<StepReport> {
    let mut rep = StepReport::default();
    // plugin metrics averaged over micro-batches, in first-seen order; the plugin host refuses more than
    // 256 per call, so the linear merge below stays cheap
    let mut metric_sums: Vec<(String, f64)> = Vec::new();
    let dev = m.model.device();
    // data parallelism: rank r of W takes micro-batches r, r+W, … of the one sample stream, so W ranks
    // with `accum` micro-batches each see what one rank with W·accum would
    let (rank, world) = (m.strategy.rank(), m.strategy.world_size());
    for micro in 0..accum {
        let (samples, pair_ids) = draw_for_rank(batcher, rank, world)?;
        let mut clock = Instant::now();
        let mb = collate(&samples, pair_ids, pad, dev)?;
        let global_micro = (micro * world + rank) as u64;
        let mseed = seed ^ (step.wrapping_mul(1_000_003) + global_micro);
        let (engine, st, batch) = forward_and_batch(m, w, &mb, step, mseed, true)?;
        rep.times.forward += lap(dev, &mut clock)?;
        let c = w.weigh(&batch, true)?;
        rep.times.plugin += lap(dev, &mut clock)?;
        if c.values
            .as_ref()
            .is_some_and(|v| v.iter().any(|&x| x != 0.0))
            && m.value_head.is_none()
        {
            anyhow::bail!("the pipeline returned value gradients but the values come from a frozen critic (set plugin.value_coef = 0)");
        }
        let scale = 1.0 / accum as f32;
        let cce: Vec<f32> = c.ce.iter().map(|x| x * scale).collect();
        let cv = c
            .values
            .as_ref()
            .map(|v| v.iter().map(|x| x * scale).collect::<Vec<_>>());
        engine.backward(&st, &cce, cv.as_deref(), grads)?;
        rep.times.backward += lap(dev, &mut clock)?;
        rep.loss += c.loss / accum as f64;
        rep.ce += super::head_ce::plain_ce(&st) / accum as f64;
        rep.tokens += mb.target_mask.iter().filter(|&&x| x != 0).count();
        add_metrics(&mut metric_sums, &c.metrics, 1.0 / accum as f64);
    }
    // each call is capped (plugin-host's MAX_METRICS); the step's line merges the micro-batches' names,
    // so a plugin naming new metrics in every call is capped here too
    if metric_sums.len() > wmtp_plugin_host::MAX_METRICS {
        anyhow::bail!(
            "plugin `{}`: its micro-batches returned {} different metric names in one step (at most {} per step)",
            w.manifest().name,
            metric_sums.len(),
            wmtp_plugin_host::MAX_METRICS
        );
    }
    rep.metrics = metric_sums;
    // the step's loss, CE and tokens over all ranks (plugin metrics stay this rank's)
    let all = m
        .strategy
        .sum_over_ranks(&[rep.loss, rep.ce, rep.tokens as f64])?;
    rep.loss = all[0] / world as f64;
    rep.ce = all[1] / world as f64;
    rep.tokens = all[2].round() as usize;
    Ok(rep)
}

/// Clips and updates the policy and value head through the session's parallel strategy (one rank's
/// whole model, or FSDP's shards), advances the optimiser's schedule and tells the weigher the step is
/// done. A non-finite gradient norm skips the update (`rep.skipped`); the caller decides how many skips
/// to tolerate.
#[allow(clippy::too_many_arguments)]
pub fn apply(
    policy: &mut Transformer,
    strategy: &mut dyn Strategy,
    vh: Option<&mut ValueHead>,
    w: &mut dyn Weigher,
    opt: &mut dyn Optimizer,
    grads: &mut Grads,
    max_grad_norm: f64,
    rep: &mut StepReport,
) -> Result<()> {
    let mut clock = Instant::now();
    let mut replicated: Vec<Replicated<'_>> = Vec::new();
    if let Some(vh) = vh {
        replicated.push(("value_head.", vh));
    }
    let step = opt.steps_taken();
    rep.lr = opt
        .lr(crate::model::ParamGroup::Lora)
        .max(opt.lr(crate::model::ParamGroup::Trunk));
    let done = strategy.update(policy, &mut replicated, opt, grads, max_grad_norm)?;
    rep.grad_norm = done.grad_norm;
    rep.skipped = done.skipped;
    opt.finish_step();
    grads.clear();
    w.after_step(step)?;
    rep.times.optimizer += lap(policy.device(), &mut clock)?;
    Ok(())
}
