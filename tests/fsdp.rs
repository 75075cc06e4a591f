//! FSDP on the in-process communicator (CPU threads as ranks): W ranks with `grad_accum = a` each train
//! like one unsharded rank with `grad_accum = W·a` on the same sample stream — same losses and the same
//! trained weights after 10 steps — for LoRA and for full fine-tuning, and each rank keeps 1/W of the
//! frozen weights. Every pipeline (the value head replicated, the plugin's all-reduce-sum across ranks)
//! gives the same result on 2 ranks as on one. A checkpoint saved on 4 ranks resumes exactly on 2 and on 1.
//! `wmtp launch` of 2 processes (TCP process group) trains like one process with twice the accumulation.
//! The memory model (`wmtp info --world-size N`) matches the measured bytes per rank within 5%. The
//! `grad-op` and `none` sharding modes train like one rank as well.

use crate::common;
use crate::fsdp_support;

use fsdp_support::*;
use std::sync::Arc;
use std::time::Duration;
use wmtp_host::checkpoint::{self, TrainerState};
use wmtp_host::model::VisitParams;
use wmtp_host::parallel::local;
use wmtp_host::train::session::Session;
use wmtp_host::train::session_step::train_step;

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

/// A launched rank of a preset draws only the base weights its shards read, frozen (LoRA) or trainable
/// (full fine-tuning): the rest stay placeholders, no memory (the sharded runs above check that the drawn
/// ones are the whole model's values), and a shard that would read a weight nobody drew is an error,
/// never zeros.
#[test]
fn a_launched_rank_draws_only_its_weights_and_never_shards_a_placeholder() {
    for lora in [true, false] {
        draws_only_its_weights(lora);
    }
}

fn draws_only_its_weights(lora: bool) {
    use wmtp_host::model::init::is_placeholder;
    let world = 3;
    let mode = if lora { "LoRA" } else { "full FT" };
    let mut drawn_by_some = std::collections::HashSet::new();
    let mut base = 0;
    for rank in 0..world {
        let s = Session::new_for(
            config(1, lora, &[]),
            &plugin("baseline"),
            Some((world, rank)),
        )
        .unwrap();
        let (mut drawn, mut all, mut trainable) = (0, 0, 0);
        base = 0;
        s.model.visit("", &mut |name, p| {
            if name.contains("lora_") {
                return;
            }
            base += 1;
            all += p.numel();
            trainable += usize::from(p.is_trainable());
            if !is_placeholder(p.tensor()) {
                drawn += p.numel();
                drawn_by_some.insert(name.to_string());
            }
        });
        // a third of each unit, rounded out to whole tensors (this tiny model's units are a few
        // tensors each, and the embedding unit is one: every rank draws it)
        eprintln!("{mode}: rank {rank} of {world} drew {drawn} of {all} base weight elements");
        assert!(
            drawn > 0 && drawn * 3 < all * 2,
            "{mode}: rank {rank} of {world} drew {drawn} of {all} base weight elements"
        );
        assert_eq!(
            trainable == 0,
            lora,
            "{mode}: {trainable} trainable base weights"
        );
    }
    assert_eq!(
        drawn_by_some.len(),
        base,
        "{mode}: some base weight no rank drew"
    );
    // built for rank 0, sharded as rank 1: its shards would read weights rank 0 never drew
    let mut s =
        Session::new_for(config(1, lora, &[]), &plugin("baseline"), Some((world, 0))).unwrap();
    let comm = local::group(world, Duration::from_secs(5)).swap_remove(1);
    let Err(err) = s.shard(Arc::new(comm)) else {
        panic!("{mode}: a session built for rank 0 sharded as rank 1");
    };
    assert!(format!("{err:#}").contains("never initialised"), "{err:#}");
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
    body: impl Fn(Arc<dyn wmtp_host::parallel::Communicator>) -> T + Send + Sync + 'static,
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

/// A `wmtp` command (`args`, e.g. `run` or `launch … -- run`) training the baseline plugin for 4 steps
/// into run folder `dir`.
fn wmtp_run(dir: &std::path::Path, args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_wmtp"));
    cmd.args(args)
        .args([
            "--pipeline",
            plugin("baseline").to_str().unwrap(),
            "--set",
            "training.steps=4",
            "--set",
            "runtime.eval_every=0",
            "--set",
        ])
        .arg(format!("checkpoint.dir={}", dir.display()));
    cmd
}

/// Per-step losses of a `wmtp` command's run (its metrics.jsonl in `dir`).
fn losses_of(dir: &std::path::Path, args: &[&str]) -> Vec<f64> {
    let out = wmtp_run(dir, args).output().unwrap();
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

/// A port free on localhost now (for a rendezvous).
fn free_port() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string()
}

/// `two` (the 4 losses of a run over two ranks) equals one process with grad_accum 2, run in `dir`.
fn assert_trains_like_one_process(dir: &std::path::Path, two: &[f64]) {
    let one = losses_of(dir, &["run", "--set", "training.grad_accum=2"]);
    assert_eq!(two.len(), 4, "{two:?}");
    for (a, b) in two.iter().zip(&one) {
        assert!((a - b).abs() <= 1e-6 * b.abs(), "{two:?} vs {one:?}");
    }
}

#[test]
fn wmtp_launch_on_two_processes_trains_like_one_process() {
    let dir = common::tempdir();
    let port = free_port();
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
    assert_trains_like_one_process(&dir.path().join("one"), &two);
}

/// Two nodes on one machine: two `wmtp launch --nnodes 2 --node-rank 0|1` (one CPU rank each, TCP
/// rendezvous on localhost, one shared run folder as on a cluster's shared file system) train like one
/// process with the same global batch.
#[test]
fn a_two_node_launch_on_localhost_trains_like_one_process() {
    let dir = common::tempdir();
    let port = free_port();
    let node = |rank: &'static str| -> Vec<&str> {
        vec![
            "launch",
            "--nnodes",
            "2",
            "--node-rank",
            rank,
            "--nproc-per-node",
            "1",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            &port,
            "--timeout-s",
            "120",
            "--",
            "run",
        ]
    };
    let run_dir = dir.path().join("two-nodes");
    let second = wmtp_run(&run_dir, &node("1"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let two = losses_of(&run_dir, &node("0"));
    let out = second.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "node 1: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_trains_like_one_process(&dir.path().join("one"), &two);
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
                let weights = match s
                    .strategy
                    .as_any()
                    .downcast_ref::<wmtp_host::parallel::fsdp::Fsdp>()
                {
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
