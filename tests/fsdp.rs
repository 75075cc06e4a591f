//! FSDP on the in-process communicator (CPU threads as ranks): W ranks with `grad_accum = a` each train
//! like one unsharded rank with `grad_accum = W·a` on the same sample stream — same losses and the same
//! trained weights after 20 steps — for LoRA and for full fine-tuning, and each rank keeps 1/W of the
//! frozen weights. Every pipeline (the value head replicated, the plugin's all-reduce-sum across ranks)
//! gives the same result on 2 ranks as on one. A checkpoint saved on 4 ranks resumes exactly on 2 and on 1.
//! `wmtp launch` of 2 processes (TCP process group) trains like one process with twice the accumulation.
//! The memory model (`wmtp info --world-size N`) matches the measured bytes per rank within 5%. The
//! `grad-op` and `none` sharding modes train like one rank as well.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use wmtp_host::dist::local;
use wmtp_host::model::{Transformer, ValueHead, VisitParams};
use wmtp_host::train::checkpoint::{self, TrainerState};
use wmtp_host::train::config::RunConfig;
use wmtp_host::train::session::Session;
use wmtp_host::train::step::train_step;

const STEPS: u64 = 20;

fn plugin(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../plugins/{name}.wasm"))
}

fn config(accum: usize, lora: bool, extra: &[&str]) -> RunConfig {
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
struct Trained {
    losses: Vec<f64>,
    weights: BTreeMap<String, Vec<f32>>,
    /// Bytes of the frozen and trainable shards of this rank (sharded runs).
    shard_bytes: (usize, usize),
    /// Units gathered ahead, and of them used (sharded runs).
    prefetched: (u64, u64),
    /// FSDP units (sharded runs).
    units: u64,
}

/// The trained tensors of the policy and of the value head (`value_head.` names) by name.
fn trained_weights(m: &Transformer, vh: Option<&ValueHead>) -> BTreeMap<String, Vec<f32>> {
    let mut out = BTreeMap::new();
    let mut take = |n: &str, p: &wmtp_host::model::Param| {
        if p.is_trainable() {
            out.insert(n.to_string(), common::values(p.tensor()));
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
struct Pipeline {
    plugin: &'static str,
    set: &'static [&'static str],
}

const BASELINE: Pipeline = Pipeline {
    plugin: "baseline",
    set: &[],
};

fn unsharded(accum: usize, lora: bool, p: Pipeline) -> Trained {
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
fn sharded(world: usize, accum: usize, lora: bool, p: Pipeline) -> Trained {
    sharded_over(world, accum, lora, p, |c| Arc::new(c))
}

/// The in-process communicator claiming a second stream: its gathers "ahead" are plain gathers, so the
/// prefetch bookkeeping (the engine naming the next unit, the stash, joins, dropping a wrong guess)
/// runs on the CPU with results that must not change.
struct AheadProbe(local::LocalComm);

impl wmtp_host::dist::Communicator for AheadProbe {
    fn rank(&self) -> usize {
        self.0.rank()
    }
    fn world_size(&self) -> usize {
        self.0.world_size()
    }
    fn all_reduce_sum(&self, x: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        self.0.all_reduce_sum(x)
    }
    fn all_gather(&self, shard: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        self.0.all_gather(shard)
    }
    fn reduce_scatter_sum(
        &self,
        full: &candle_core::Tensor,
    ) -> candle_core::Result<candle_core::Tensor> {
        self.0.reduce_scatter_sum(full)
    }
    fn broadcast(
        &self,
        x: &candle_core::Tensor,
        root: usize,
    ) -> candle_core::Result<candle_core::Tensor> {
        self.0.broadcast(x, root)
    }
    fn barrier(&self) -> candle_core::Result<()> {
        self.0.barrier()
    }
    fn gathers_ahead(&self) -> bool {
        true
    }
}

/// [`sharded`] over the communicators `wrap` makes of the in-process ones.
fn sharded_over(
    world: usize,
    accum: usize,
    lora: bool,
    p: Pipeline,
    wrap: fn(local::LocalComm) -> Arc<dyn wmtp_host::dist::Communicator>,
) -> Trained {
    let comms = local::group(world, Duration::from_secs(120));
    let handles: Vec<_> = comms
        .into_iter()
        .map(|c| {
            std::thread::spawn(move || {
                let mut s = Session::new(config(accum, lora, p.set), &plugin(p.plugin)).unwrap();
                s.shard(wrap(c)).unwrap();
                let losses = (0..STEPS)
                    .map(|i| train_step(&mut s, i).unwrap().loss)
                    .collect();
                let f = s.fsdp.as_ref().unwrap();
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
/// weight trained) drifts by ~1e-5 over 20 steps, LoRA stays below 1e-6.
fn assert_same(label: &str, a: &Trained, b: &Trained, w_tol: f32) {
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

fn frozen_bytes(lora: bool) -> usize {
    let s = Session::new(config(1, lora, &[]), &plugin("baseline")).unwrap();
    s.model
        .named_params()
        .iter()
        .filter(|(_, p)| !p.is_trainable())
        .map(|(_, p)| p.numel() * p.tensor().dtype().size_in_bytes())
        .sum()
}

#[test]
fn lora_on_w_ranks_trains_like_one_rank_and_each_keeps_one_wth_of_the_frozen_weights() {
    let total = frozen_bytes(true);
    for world in 1..=4 {
        let one = unsharded(world, true, BASELINE);
        let many = sharded(world, 1, true, BASELINE);
        assert_same(&format!("LoRA, {world} rank(s)"), &one, &many, 1e-5);
        let (frozen, _) = many.shard_bytes;
        // each unit is padded to a multiple of W: at most W−1 elements (4 bytes) of padding per unit
        let units = 64;
        assert!(
            frozen * world >= total && frozen <= total / world + units * 4 * world,
            "{world} ranks: {frozen} bytes of frozen shards per rank for {total} in all"
        );
        eprintln!("{world} rank(s): frozen bytes per rank {frozen} of {total}");
    }
}

#[test]
fn full_fine_tuning_on_w_ranks_trains_like_one_rank() {
    for world in [2, 3] {
        let one = unsharded(2 * world, false, BASELINE);
        let many = sharded(world, 2, false, BASELINE);
        assert_same(
            &format!("full FT, {world} ranks × 2 micro-batches"),
            &one,
            &many,
            1e-4,
        );
    }
}

#[test]
fn every_pipeline_on_two_ranks_trains_like_one_rank() {
    // critic and verifiable train the replicated value head (gradients all-reduced); verifiable's
    // after-step statistics go through the plugin's all-reduce-sum; rho1 reads a reference model
    let pipelines = [
        Pipeline {
            plugin: "critic",
            set: &[],
        },
        Pipeline {
            plugin: "verifiable",
            set: &[],
        },
        Pipeline {
            plugin: "rho1",
            set: &["reference.baseline_steps=3"],
        },
    ];
    for p in pipelines {
        let one = unsharded(2, true, p);
        let many = sharded(2, 1, true, p);
        assert_same(&format!("{}, 2 ranks", p.plugin), &one, &many, 1e-5);
    }
}

/// Session of one rank of `world` (None: unsharded), from checkpoint `ckpt` when given, with
/// `grad_accum = 4 / world`.
fn session_at(
    world: Option<usize>,
    ckpt: Option<&std::path::Path>,
    extra: &'static [&'static str],
) -> Session {
    let accum = 4 / world.unwrap_or(1);
    let set = [format!("training.grad_accum={accum}")];
    match ckpt {
        None => Session::new(config(accum, true, extra), &plugin("baseline")).unwrap(),
        Some(c) => {
            let (cfg, st) = checkpoint::read_meta(c, &set).unwrap();
            let mut s = Session::new(cfg, &plugin("baseline")).unwrap();
            checkpoint::load_into(c, &mut s, &st).unwrap();
            s
        }
    }
}

/// Validation CE, then the losses of steps `from..to`.
fn validate_and_train(s: &mut Session, from: u64, to: u64) -> (f64, Vec<f64>) {
    let ce = s.validate().unwrap().expect("validation items").ce;
    let losses = (from..to).map(|i| train_step(s, i).unwrap().loss).collect();
    (ce, losses)
}

/// Runs `body` on every rank of a group of `world` and returns rank 0's result.
fn on_ranks<T: Send + 'static>(
    world: usize,
    body: impl Fn(Arc<dyn wmtp_host::dist::Communicator>) -> T + Send + Sync + 'static,
) -> T {
    let body = Arc::new(body);
    let handles: Vec<_> = local::group(world, Duration::from_secs(120))
        .into_iter()
        .map(|c| {
            let body = body.clone();
            std::thread::spawn(move || body(Arc::new(c)))
        })
        .collect();
    let mut out: Vec<T> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    out.swap_remove(0)
}

/// 4 ranks train 6 steps, save (with `extra` settings), train 4 more; the checkpoint resumed on 2 ranks
/// and on 1 gives the same validation CE and the same 4 losses.
fn resume_on_fewer_ranks(label: &str, extra: &'static [&'static str]) {
    let dir = common::tempdir();
    let run_dir = dir.path().to_path_buf();
    // 4 ranks: 6 steps, save, then 4 more (the uninterrupted run)
    let (ckpt, uninterrupted) = on_ranks(4, move |comm| {
        let mut s = session_at(Some(4), None, extra);
        s.shard(comm).unwrap();
        for i in 0..6 {
            train_step(&mut s, i).unwrap();
        }
        let st = TrainerState {
            format: checkpoint::CHECKPOINT_FORMAT,
            step: 6,
            epoch: s.batcher.epoch,
            index: s.batcher.index,
            best_val: None,
            pipeline: "baseline".into(),
            pipeline_sha256: String::new(),
        };
        let ckpt = checkpoint::save(&run_dir, "step-6", &mut s, &st).unwrap();
        (ckpt, validate_and_train(&mut s, 6, 10))
    });
    if extra.is_empty() {
        // the LoRA-only save holds the whole adapter, not rank 0's slice
        let saved = candle_core::safetensors::load(
            ckpt.join("adapter/adapter_model.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let s = session_at(None, None, extra);
        for (n, p) in s.model.named_params() {
            if p.is_trainable() {
                let t = &saved[&format!("base_model.model.{n}")];
                assert_eq!(t.dims(), p.tensor().dims(), "{n}");
            }
        }
    } else {
        let files = std::fs::read_dir(ckpt.join("shards"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("rank-")
            })
            .count();
        assert_eq!(files, 4, "one file per rank");
    }
    let c2 = ckpt.clone();
    let two = on_ranks(2, move |comm| {
        let mut s = session_at(Some(2), Some(&c2), extra);
        s.shard(comm).unwrap();
        validate_and_train(&mut s, 6, 10)
    });
    let one = validate_and_train(&mut session_at(None, Some(&ckpt), extra), 6, 10);
    for (ranks, (ce, losses)) in [("2 ranks", two), ("1 rank", one)] {
        let label = format!("{label} resumed on {ranks}");
        assert!(
            (ce - uninterrupted.0).abs() < 1e-6,
            "{label}: validation CE {ce} vs {} on 4 ranks",
            uninterrupted.0
        );
        for (i, (a, b)) in losses.iter().zip(&uninterrupted.1).enumerate() {
            assert!(
                (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                "{label}: step {} loss {a} vs {b} uninterrupted on 4 ranks",
                6 + i
            );
        }
        eprintln!(
            "{label}: validation CE {ce:.6} (4 ranks {:.6}), last loss {:.6} ({:.6})",
            uninterrupted.0,
            losses.last().unwrap(),
            uninterrupted.1.last().unwrap()
        );
    }
}

#[test]
fn a_checkpoint_saved_on_four_ranks_resumes_on_two_and_on_one_exactly() {
    resume_on_fewer_ranks("full checkpoint", &[]);
}

#[test]
fn a_per_rank_checkpoint_saved_on_four_ranks_resumes_on_two_and_on_one_exactly() {
    resume_on_fewer_ranks("per-rank checkpoint", &["checkpoint.sharded=true"]);
}

/// Per-step losses of a `wmtp` command's run (its metrics.jsonl in `dir`).
fn losses_of(dir: &std::path::Path, args: &[&str]) -> Vec<f64> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wmtp"))
        .args(args)
        .args([
            "--pipeline",
            plugin("baseline").to_str().unwrap(),
            "--set",
            "training.steps=4",
            "--set",
            "runtime.eval_every=0",
            "--set",
        ])
        .arg(format!("checkpoint.dir={}", dir.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["loss"].as_f64())
        .collect()
}

#[test]
fn wmtp_launch_on_two_processes_trains_like_one_process() {
    let dir = common::tempdir();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let two = losses_of(
        &dir.path().join("two"),
        &[
            "launch",
            "--nproc-per-node",
            "2",
            "--master-port",
            &port,
            "--",
            "run",
        ],
    );
    let one = losses_of(
        &dir.path().join("one"),
        &["run", "--set", "training.grad_accum=2"],
    );
    assert_eq!(two.len(), 4, "{two:?}");
    for (a, b) in two.iter().zip(&one) {
        assert!((a - b).abs() <= 1e-6 * b.abs(), "{two:?} vs {one:?}");
    }
}

/// Bytes of the optimiser's tensors (moments, masters).
fn optimizer_bytes(s: &Session) -> usize {
    s.optimizer
        .state()
        .0
        .values()
        .map(|t| t.elem_count() * t.dtype().size_in_bytes())
        .sum()
}

#[test]
fn the_memory_model_matches_the_measured_bytes_per_rank() {
    use wmtp_host::model::memory::{Counts, MemoryEstimate};
    for lora in [true, false] {
        let s = Session::new(config(1, lora, &[]), &plugin("baseline")).unwrap();
        let (total, trainable) = s.model.param_counts();
        let counts = Counts {
            total,
            trainable,
            ..Default::default()
        };
        for world in [1usize, 2, 4] {
            let measured = on_ranks(world, move |comm| {
                let mut s = Session::new(config(1, lora, &[]), &plugin("baseline")).unwrap();
                if world > 1 {
                    s.shard(comm).unwrap();
                }
                train_step(&mut s, 0).unwrap(); // the moments exist after a step
                let weights = match &s.fsdp {
                    Some(f) => {
                        let (frozen, shards) = f.shard_bytes();
                        frozen + shards
                    }
                    None => s
                        .model
                        .named_params()
                        .iter()
                        .map(|(_, p)| p.numel() * p.tensor().dtype().size_in_bytes())
                        .sum(),
                };
                weights + optimizer_bytes(&s)
            }) as f64;
            let predicted = MemoryEstimate::new(counts, 4, world).persistent();
            let err = (measured - predicted).abs() / measured;
            eprintln!(
                "{} on {world} rank(s): measured {measured:.0} bytes per rank, model {predicted:.0} ({:.2}%)",
                if lora { "LoRA" } else { "full FT" },
                100.0 * err
            );
            assert!(err < 0.05, "off by {:.1}%", 100.0 * err);
        }
    }
}

#[test]
fn grad_op_and_no_shard_train_like_one_rank_too() {
    let total = frozen_bytes(true);
    for (mode, set) in [
        (
            "grad-op",
            &["distributed.sharding=\"grad-op\""] as &'static [&'static str],
        ),
        ("none", &["distributed.sharding=\"none\""]),
    ] {
        let p = Pipeline {
            plugin: "baseline",
            set,
        };
        let many = sharded(3, 1, true, p);
        assert_same(
            &format!("LoRA, 3 ranks, {mode}"),
            &unsharded(3, true, p),
            &many,
            1e-5,
        );
        // weights are split under grad-op, whole on every rank without sharding
        let (frozen, _) = many.shard_bytes;
        match mode {
            "none" => assert_eq!(frozen, total, "{mode}"),
            _ => assert!(
                frozen * 3 >= total && frozen < total / 2,
                "{mode}: {frozen} of {total}"
            ),
        }
        assert_same(
            &format!("full FT, 2 ranks, {mode}"),
            &unsharded(2, false, p),
            &sharded(2, 1, false, p),
            1e-4,
        );
    }
}

#[test]
fn prefetching_the_next_unit_changes_nothing_and_the_engine_names_it_right() {
    // the prefetched weights are used in place of gathered ones, for LoRA (only the attention
    // projections trained) and full fine-tuning (every unit trained, embedding included)
    for lora in [true, false] {
        let plain = sharded(2, 2, lora, BASELINE);
        assert_eq!(plain.prefetched, (0, 0), "no second stream, no prefetch");
        let ahead = sharded_over(2, 2, lora, BASELINE, |c| Arc::new(AheadProbe(c)));
        assert_eq!(plain.losses, ahead.losses, "lora {lora}: losses");
        assert_eq!(plain.weights, ahead.weights, "lora {lora}: weights");
        let (issued, used) = ahead.prefetched;
        // per micro-batch, U units: the forward visits all U and prefetches all but the first; the
        // backward visits all U (LoRA: all but the frozen embedding) and prefetches all but the first
        let u = ahead.units;
        let per_micro = (u - 1) + if lora { u - 2 } else { u - 1 };
        assert_eq!(
            issued,
            STEPS * 2 * per_micro,
            "lora {lora}: units prefetched ({u} units)"
        );
        assert_eq!(
            issued, used,
            "lora {lora}: {issued} units prefetched, {used} used"
        );
    }
}
