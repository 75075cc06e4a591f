//! One optimizer step and one validation pass: micro-batches through the engine, the pipeline's
//! coefficients (a plugin, or the native baseline used for the automatic reference stage), gradient
//! accumulation, clipping, the AdamW update, and the plugin's after-step.

use super::engine::{Engine, ForwardState, MicroBatch};
use super::grads::Grads;
use super::optim::{clip_global_norm, AdamW};
use crate::data::batcher::{collate, Batcher, Items};
use crate::model::{Transformer, ValueHead};
use crate::plugin::{Batch, Coefficients, InputKind, Plugin};
use anyhow::Result;

/// What turns per-token scalars into coefficients.
pub trait Weigher {
    /// Coefficients for one micro-batch.
    fn weigh(&mut self, b: &Batch, train: bool) -> Result<Coefficients>;
    /// After each optimizer step.
    fn after_step(&mut self, step: u64) -> Result<()>;
    /// Inputs to fill in batches.
    fn needs(&self) -> Vec<InputKind>;
}

impl Weigher for Plugin {
    fn weigh(&mut self, b: &Batch, train: bool) -> Result<Coefficients> {
        Plugin::weigh(self, b, train)
    }
    fn after_step(&mut self, step: u64) -> Result<()> {
        Plugin::after_step(self, step)
    }
    fn needs(&self) -> Vec<InputKind> {
        self.manifest().needs.clone()
    }
}

/// The baseline loss computed natively: c = M / (n_k · H_valid) (used for the automatic reference stage).
pub struct NativeBaseline;

impl Weigher for NativeBaseline {
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
    fn needs(&self) -> Vec<InputKind> {
        vec![]
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
    let needs = w.needs();
    let engine = Engine {
        model: m.model,
        value_head: m.value_head,
        chunk_rows: m.chunk_rows,
        seed,
        train,
    };
    let st = engine.forward(mb)?;
    let (b, t, h) = st.shape;
    let ref_ce = match (needs.contains(&InputKind::Reference), m.reference) {
        (true, Some(r)) => {
            let re = Engine {
                model: r,
                value_head: None,
                chunk_rows: m.chunk_rows,
                seed,
                train: false,
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
        values: match (needs.contains(&InputKind::Values), m.critic) {
            (true, Some((cm, cv))) => Some(super::engine::critic_values(cm, cv, mb)?),
            (true, None) => st.values.clone(),
            (false, _) => None,
        },
        ref_ce,
        rewards: if needs.contains(&InputKind::Rewards) {
            mb.rewards.clone()
        } else {
            None
        },
        pair_ids: if needs.contains(&InputKind::Pairs) {
            Some(mb.pair_ids.clone().unwrap_or_else(|| vec![-1; b]))
        } else {
            None
        },
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
    /// Learning rate used (peak lr × schedule).
    pub lr: f64,
    /// Trained tokens (Σ m).
    pub tokens: usize,
    /// Plugin metrics averaged over micro-batches.
    pub metrics: Vec<(String, f64)>,
}

/// Unweighted CE: per-head mean over valid tokens, averaged over heads with tokens.
pub fn plain_ce(st: &ForwardState) -> f64 {
    let h = st.shape.2;
    let (mut s, mut n) = (vec![0f64; h], vec![0f64; h]);
    for (i, (&c, &m)) in st.ce.iter().zip(&st.ce_mask).enumerate() {
        s[i % h] += c as f64 * m as f64;
        n[i % h] += m as f64;
    }
    let used: Vec<f64> = (0..h)
        .filter(|&k| n[k] > 0.0)
        .map(|k| s[k] / n[k])
        .collect();
    if used.is_empty() {
        0.0
    } else {
        used.iter().sum::<f64>() / used.len() as f64
    }
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
    let mut metric_sums: Vec<(String, f64)> = Vec::new();
    for micro in 0..accum {
        let (samples, pair_ids) = batcher.next_samples();
        let mb = collate(&samples, pair_ids, pad, m.model.device())?;
        let mseed = seed ^ (step.wrapping_mul(1_000_003) + micro as u64);
        let (engine, st, batch) = forward_and_batch(m, w, &mb, step, mseed, true)?;
        let c = w.weigh(&batch, true)?;
        if c.values
            .as_ref()
            .is_some_and(|v| v.iter().any(|&x| x != 0.0))
            && m.value_head.is_none()
        {
            anyhow::bail!("the pipeline returned value gradients but the values come from a frozen critic (set plugin.value_coef = 0)");
        }
        let scale = 1.0 / accum as f32;
        let cce: Vec<f32> = c.ce.iter().map(|x| x * scale).collect();
        let cv: Option<Vec<f32>> = c
            .values
            .as_ref()
            .map(|v| v.iter().map(|x| x * scale).collect());
        engine.backward(&st, &cce, cv.as_deref(), grads)?;
        rep.loss += c.loss / accum as f64;
        rep.ce += plain_ce(&st) / accum as f64;
        rep.tokens += mb.target_mask.iter().filter(|&&x| x != 0).count();
        for (k, v) in c.metrics {
            match metric_sums.iter_mut().find(|(n, _)| *n == k) {
                Some(e) => e.1 += v / accum as f64,
                None => metric_sums.push((k, v / accum as f64)),
            }
        }
    }
    rep.metrics = metric_sums;
    Ok(rep)
}

/// Clips, updates the policy and value head, and tells the weigher the step is done.
pub fn apply(
    policy: &mut Transformer,
    vh: Option<&mut ValueHead>,
    w: &mut dyn Weigher,
    opt: &mut AdamW,
    grads: &mut Grads,
    max_grad_norm: f64,
    rep: &mut StepReport,
) -> Result<()> {
    rep.grad_norm = clip_global_norm(grads, max_grad_norm)?;
    rep.lr = opt
        .lr(crate::model::ParamGroup::Lora)
        .max(opt.lr(crate::model::ParamGroup::Trunk));
    let step = opt.step;
    opt.update_module(policy, "", grads)?;
    if let Some(vh) = vh {
        opt.update_module(vh, "value_head.", grads)?;
    }
    opt.finish_step();
    grads.clear();
    w.after_step(step)
}

/// Validation results: plain CE, pipeline loss (train = false) and plugin metrics, averaged over batches.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Validation {
    /// Unweighted CE.
    pub ce: f64,
    /// The pipeline's loss.
    pub loss: f64,
    /// The plugin's metrics.
    pub metrics: Vec<(String, f64)>,
}

/// Validation over `items` (None when there are none).
pub fn evaluate(
    m: &Models,
    w: &mut dyn Weigher,
    items: &Items,
    batch_items: usize,
    pad: u32,
) -> Result<Option<Validation>> {
    let mut b = match Batcher::new(items.clone(), batch_items, 0, 0, 1) {
        Ok(b) => b,
        Err(_) => return Ok(None),
    };
    let n = b.batches_per_epoch();
    let mut v = Validation::default();
    for _ in 0..n {
        let (samples, ids) = b.next_samples();
        let mb = collate(&samples, ids, pad, m.model.device())?;
        let (_, st, batch) = forward_and_batch(m, w, &mb, 0, 0, false)?;
        v.ce += plain_ce(&st) / n as f64;
        let c = w.weigh(&batch, false)?;
        v.loss += c.loss / n as f64;
        for (k, x) in c.metrics {
            match v.metrics.iter_mut().find(|(name, _)| *name == k) {
                Some(e) => e.1 += x / n as f64,
                None => v.metrics.push((k, x / n as f64)),
            }
        }
    }
    Ok(Some(v))
}
