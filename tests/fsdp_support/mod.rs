//! What the FSDP tests share: the config of a short run, unsharded and sharded runs on the in-process
//! communicator (CPU threads as ranks), and how two runs are compared.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use wmtp_host::model::{Transformer, ValueHead, VisitParams};
use wmtp_host::parallel::fsdp::Fsdp;
use wmtp_host::parallel::local;
use wmtp_host::parallel::Communicator;
use wmtp_host::train::config::RunConfig;
use wmtp_host::train::session::Session;
use wmtp_host::train::session_step::train_step;

pub const STEPS: u64 = 10;

/// A shipped plugin (see `common::shipped_plugin`).
pub fn plugin(name: &str) -> PathBuf {
    crate::common::shipped_plugin(name)
}

pub fn config(accum: usize, lora: bool, extra: &[&str]) -> RunConfig {
    let mut set = vec![
        format!("training.steps={STEPS}"),
        format!("training.grad_accum={accum}"),
        "training.batch_size=2".to_string(),
        "runtime.eval_every=0".to_string(),
        "runtime.progress=false".to_string(),
    ];
    if lora {
        set.push("training.use_lora=true".into());
    }
    set.extend(extra.iter().map(|s| s.to_string()));
    RunConfig::load(None, &set).unwrap()
}

/// What a run leaves: the loss of every step and the trained weights by name.
pub struct Trained {
    pub losses: Vec<f64>,
    pub weights: BTreeMap<String, Vec<f32>>,
    /// Bytes of the frozen and trainable shards of this rank (sharded runs).
    pub shard_bytes: (usize, usize),
    /// Units gathered ahead, and of them used (sharded runs).
    pub prefetched: (u64, u64),
    /// FSDP units (sharded runs).
    pub units: u64,
}

/// The trained tensors of the policy and of the value head (`value_head.` names) by name.
pub fn trained_weights(m: &Transformer, vh: Option<&ValueHead>) -> BTreeMap<String, Vec<f32>> {
    let mut out = BTreeMap::new();
    let mut take = |n: &str, p: &wmtp_host::model::Param| {
        if p.is_trainable() {
            out.insert(n.to_string(), crate::common::values(p.tensor()));
        }
    };
    m.visit("", &mut take);
    if let Some(vh) = vh {
        vh.visit("value_head.", &mut take);
    }
    out
}

/// A pipeline and its extra settings.
#[derive(Clone, Copy)]
pub struct Pipeline {
    pub plugin: &'static str,
    pub set: &'static [&'static str],
}

pub const BASELINE: Pipeline = Pipeline {
    plugin: "baseline",
    set: &[],
};

pub fn unsharded(accum: usize, lora: bool, p: Pipeline) -> Trained {
    let mut s = Session::new(config(accum, lora, p.set), &plugin(p.plugin)).unwrap();
    let losses = (0..STEPS)
        .map(|i| train_step(&mut s, i).unwrap().loss)
        .collect();
    Trained {
        losses,
        weights: trained_weights(&s.model, s.value_head.as_ref()),
        shard_bytes: (0, 0),
        prefetched: (0, 0),
        units: 0,
    }
}

/// Rank 0's run of a group of `world` ranks, each with `accum` micro-batches per step.
pub fn sharded(world: usize, accum: usize, lora: bool, p: Pipeline) -> Trained {
    sharded_over(world, accum, lora, p, |c| Arc::new(c))
}

/// [`sharded`] over the communicators `wrap` makes of the in-process ones.
pub fn sharded_over(
    world: usize,
    accum: usize,
    lora: bool,
    p: Pipeline,
    wrap: fn(local::LocalComm) -> Arc<dyn wmtp_host::parallel::Communicator>,
) -> Trained {
    let comms = local::group(world, Duration::from_secs(120));
    let handles: Vec<_> = comms
        .into_iter()
        .map(|c| {
            std::thread::spawn(move || {
                // as a launched rank builds it: policy in host memory, a LoRA preset drawing only
                // the weights this rank's shards read (train::shard_init)
                let place = Some((world, c.rank()));
                let mut s =
                    Session::new_for(config(accum, lora, p.set), &plugin(p.plugin), place).unwrap();
                s.shard(wrap(c)).unwrap();
                let losses = (0..STEPS)
                    .map(|i| train_step(&mut s, i).unwrap().loss)
                    .collect();
                let f = s.strategy.as_any().downcast_ref::<Fsdp>().unwrap();
                let full = f.materialize_all(&s.model).unwrap();
                let weights = trained_weights(&full, s.value_head.as_ref());
                Trained {
                    losses,
                    weights,
                    shard_bytes: f.shard_bytes(),
                    prefetched: f.prefetch_counts(),
                    units: f.units().count() as u64,
                }
            })
        })
        .collect();
    let mut runs: Vec<Trained> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for r in &runs[1..] {
        assert_eq!(r.losses, runs[0].losses, "ranks disagree on the losses");
        assert_eq!(r.weights, runs[0].weights, "ranks disagree on the weights");
    }
    runs.swap_remove(0)
}

/// Losses equal to 1e-5 (relative) and trained weights to `w_tol`. The sums differ only in order (one rank
/// adds W·a micro-batches in turn; W ranks add a each, then reduce-scatter in rank order), and AdamW's
/// m/√v turns rounding in near-zero gradients into steps of up to lr: full fine-tuning (lr 3e-3, every
/// weight trained) drifted by ~1e-5 over 20 steps, LoRA stays below 1e-6 (the tests run [`STEPS`]).
pub fn assert_same(label: &str, a: &Trained, b: &Trained, w_tol: f32) {
    for (i, (x, y)) in a.losses.iter().zip(&b.losses).enumerate() {
        assert!(
            (x - y).abs() <= 1e-5 * x.abs().max(1.0),
            "{label}: step {i} loss {x} vs {y}"
        );
    }
    assert_eq!(
        a.weights.keys().collect::<Vec<_>>(),
        b.weights.keys().collect::<Vec<_>>(),
        "{label}: trained tensors"
    );
    let (mut worst, mut at) = (0f32, "");
    for (name, wa) in &a.weights {
        let wb = &b.weights[name];
        assert_eq!(wa.len(), wb.len(), "{label}: {name}");
        for (x, y) in wa.iter().zip(wb) {
            if (x - y).abs() > worst {
                (worst, at) = ((x - y).abs(), name);
            }
        }
    }
    let dl = a
        .losses
        .iter()
        .zip(&b.losses)
        .map(|(x, y)| (x - y).abs())
        .fold(0f64, f64::max);
    assert!(
        worst <= w_tol,
        "{label}: weights differ by {worst} (in {at}); losses by at most {dl:.2e}"
    );
    eprintln!(
        "{label}: final loss {:.6} vs {:.6}; max |Δw| {worst:.2e}",
        a.losses.last().unwrap(),
        b.losses.last().unwrap()
    );
}
