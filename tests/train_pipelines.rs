//! Training end to end on the tiny preset and the bundled corpus: every pipeline in LoRA and full mode
//! lowers its loss; checkpoints are written and reload; a resumed run reproduces the uninterrupted run's
//! losses exactly; config and data errors are clear and leave earlier checkpoints intact.

use crate::common;

use wmtp_host::run::{run, RunOptions, RunSummary};

use common::train;

pub(crate) fn mean(x: &[f64]) -> f64 {
    x.iter().sum::<f64>() / x.len() as f64
}

/// The trained quantity falls (mean of the last quarter below the first's): the cross-entropy for the
/// policy pipelines (their weighted losses re-weight tokens as they go, so successive values are not
/// comparable), the value loss for the critic.
pub(crate) fn assert_falls(name: &str, r: &RunSummary, series: &[f64]) {
    let q = (series.len() / 4).max(1);
    let (first, last) = (mean(&series[..q]), mean(&series[series.len() - q..]));
    assert!(
        last < first,
        "{name}: did not fall: first {first:.4}, last {last:.4} ({series:?}); losses {:?}",
        r.losses
    );
}

#[test]
fn every_pipeline_learns_in_both_modes() {
    for pipeline in ["baseline", "rho1", "verifiable", "critic"] {
        for lora in [true, false] {
            let dir = common::tempdir();
            let lr = if lora {
                "training.lr=0.01"
            } else {
                "training.lr=0.003"
            };
            let r = train(
                pipeline,
                dir.path(),
                &[
                    "training.steps=16",
                    &format!("training.use_lora={lora}"),
                    lr,
                ],
            )
            .unwrap_or_else(|e| panic!("{pipeline} lora={lora}: {e:#}"));
            assert_eq!(r.losses.len(), 16);
            let series = if pipeline == "critic" {
                &r.losses
            } else {
                &r.ces
            };
            assert_falls(&format!("{pipeline} lora={lora}"), &r, series);
            let ck = &r.last_checkpoint;
            for f in [
                "config.toml",
                "trainer_state.json",
                "plugin_state.bin",
                "optimizer.safetensors",
            ] {
                assert!(
                    ck.join(f).exists(),
                    "{pipeline}: {} missing",
                    ck.join(f).display()
                );
            }
            let weights = if lora {
                ck.join("adapter/adapter_config.json")
            } else {
                ck.join("model/model.safetensors")
            };
            assert!(weights.exists(), "{}", weights.display());
        }
    }
}

#[test]
fn resume_reproduces_the_uninterrupted_run() {
    for (pipeline, lora) in [("verifiable", true), ("baseline", false)] {
        let full = common::tempdir();
        let a = train(
            pipeline,
            full.path(),
            &[
                "training.steps=8",
                "checkpoint.every=4",
                &format!("training.use_lora={lora}"),
            ],
        )
        .unwrap();
        let part = common::tempdir();
        let _ = train(
            pipeline,
            part.path(),
            &[
                "training.steps=8",
                "checkpoint.every=4",
                &format!("training.use_lora={lora}"),
            ],
        )
        .unwrap();
        let ckpt = part.path().join("checkpoints/step-000004");
        let b = run(&RunOptions {
            resume: Some(ckpt),
            quiet: true,
            set: vec![format!(
                "checkpoint.dir={}",
                part.path().join("resumed").display()
            )],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(b.losses.len(), 4);
        assert_eq!(
            &a.losses[4..],
            &b.losses[..],
            "{pipeline}: resumed losses differ from the uninterrupted run"
        );
        assert_eq!(a.val, b.val);
    }
}

#[test]
fn config_errors_name_the_key() {
    let dir = common::tempdir();
    let e = format!(
        "{:#}",
        train("baseline", dir.path(), &["training.stepz=3"]).unwrap_err()
    );
    assert!(e.contains("stepz"), "{e}");
    let e = format!(
        "{:#}",
        train("baseline", dir.path(), &["plugin.nonsense=1"]).unwrap_err()
    );
    assert!(e.contains("nonsense") && e.contains("baseline"), "{e}");
    let e = format!(
        "{:#}",
        train("rho1", dir.path(), &["plugin.k_percent=2.0"]).unwrap_err()
    );
    assert!(e.contains("k_percent"), "{e}");
}

#[test]
fn corrupt_data_and_checkpoints_are_clear_errors_and_keep_the_previous_checkpoint() {
    let dir = common::tempdir();
    let data = dir.path().join("bad.jsonl");
    std::fs::write(&data, "{\"text\": \"fine line\"}\n{\"text\": broken\n").unwrap();
    let e = format!(
        "{:#}",
        train(
            "baseline",
            dir.path(),
            &[&format!("data.train={}", data.display())]
        )
        .unwrap_err()
    );
    assert!(e.contains("bad.jsonl:2"), "{e}");

    let r = train(
        "baseline",
        dir.path(),
        &["training.steps=2", "training.use_lora=true"],
    )
    .unwrap();
    let ck = r.last_checkpoint.clone();
    let adapter = ck.join("adapter/adapter_model.safetensors");
    let good = std::fs::read(&adapter).unwrap();
    // a corrupt copy fails to resume with the file named …
    let broken = dir.path().join("broken");
    std::fs::create_dir_all(broken.join("adapter")).unwrap();
    for f in [
        "config.toml",
        "trainer_state.json",
        "plugin_state.bin",
        "optimizer.safetensors",
    ] {
        std::fs::copy(ck.join(f), broken.join(f)).unwrap();
    }
    std::fs::copy(
        ck.join("adapter/adapter_config.json"),
        broken.join("adapter/adapter_config.json"),
    )
    .unwrap();
    std::fs::write(
        broken.join("adapter/adapter_model.safetensors"),
        &good[..good.len() / 2],
    )
    .unwrap();
    let e = format!(
        "{:#}",
        run(&RunOptions {
            resume: Some(broken),
            quiet: true,
            ..Default::default()
        })
        .unwrap_err()
    );
    assert!(e.contains("adapter_model.safetensors"), "{e}");
    // … and the original checkpoint is untouched and still resumes
    assert_eq!(std::fs::read(&adapter).unwrap(), good);
    let more = run(&RunOptions {
        resume: Some(ck),
        quiet: true,
        set: vec![
            "training.steps=3".into(),
            format!("checkpoint.dir={}", dir.path().join("more").display()),
        ],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(more.losses.len(), 1);
}

#[test]
fn verifiable_takes_values_from_a_frozen_critic_checkpoint() {
    let dir = common::tempdir();
    let critic = train(
        "critic",
        &dir.path().join("critic"),
        &[
            "training.steps=3",
            "training.use_lora=true",
            "training.trainable=[\"lora\", \"value_head\"]",
        ],
    )
    .unwrap();
    let ck = critic.last_checkpoint.display().to_string();
    let r = train(
        "verifiable",
        &dir.path().join("policy"),
        &[
            "training.steps=3",
            &format!("critic.checkpoint={ck}"),
            "plugin.value_coef=0.0",
        ],
    )
    .unwrap();
    assert_eq!(r.losses.len(), 3);
    let metrics = std::fs::read_to_string(r.run_dir.join("metrics.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    assert!(
        first["plugin.adv_std"].as_f64().unwrap() > 0.0,
        "values from the trained critic vary: {first}"
    );
    let e = format!(
        "{:#}",
        train(
            "verifiable",
            &dir.path().join("bad"),
            &["training.steps=1", &format!("critic.checkpoint={ck}")]
        )
        .unwrap_err()
    );
    assert!(e.contains("value_coef"), "{e}");
}

/// The per-step rows of a run's metrics.jsonl.
fn metric_rows(run_dir: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Head-0-preserving recipes: `training.trainable_prefixes = ["extra_heads."]` leaves head 0's held-out CE
/// bit-identical while head 1's falls (LoRA, and whole head blocks without LoRA); `head_weights` makes the
/// plugin's loss the λ-weighted mean of the heads' CEs (checked against the per-head CE metrics of the same
/// step); bad values are errors naming the key.
#[test]
fn head_recipes_keep_head_0_or_weight_the_heads() {
    for extra in [
        vec!["training.use_lora=true", "training.lr=0.01"],
        vec![
            "training.use_lora=false",
            "training.lr=0.003",
            "training.trainable=[\"heads\"]",
        ],
    ] {
        let dir = common::tempdir();
        let mut set = vec![
            "training.steps=6",
            "runtime.eval_every=3",
            "training.trainable_prefixes=[\"extra_heads.\"]",
        ];
        set.extend(extra.iter().copied());
        let r = train("baseline", dir.path(), &set).unwrap_or_else(|e| panic!("{extra:?}: {e:#}"));
        let val: Vec<(f64, f64)> = metric_rows(&r.run_dir)
            .iter()
            .filter_map(|m| Some((m["val_ce_h0"].as_f64()?, m["val_ce_h1"].as_f64()?)))
            .collect();
        assert!(val.len() >= 3, "{extra:?}: {val:?}");
        assert!(
            val.iter().all(|v| v.0 == val[0].0),
            "{extra:?}: head 0 moved: {val:?}"
        );
        assert!(
            val[val.len() - 1].1 < val[0].1 - 1e-3,
            "{extra:?}: head 1 did not learn: {val:?}"
        );
    }
    // λ = [1, 0.25]: loss = (ce_h0 + 0.25·ce_h1) / 1.25 at every step
    let dir = common::tempdir();
    let r = train(
        "baseline",
        dir.path(),
        &["training.steps=3", "plugin.head_weights=[1.0, 0.25]"],
    )
    .unwrap();
    let rows: Vec<serde_json::Value> = metric_rows(&r.run_dir)
        .into_iter()
        .filter(|m| m.get("loss").is_some())
        .collect();
    assert_eq!(rows.len(), 3);
    for m in rows {
        let (l, h0, h1) = (
            m["loss"].as_f64().unwrap(),
            m["plugin.ce_h0"].as_f64().unwrap(),
            m["plugin.ce_h1"].as_f64().unwrap(),
        );
        let want = (h0 + 0.25 * h1) / 1.25;
        assert!((l - want).abs() < 1e-5 * want, "loss {l} vs {want}");
    }
    for (bad, says) in [
        ("plugin.head_weights=[1.0, 0.5, 0.25]", "head_weights"),
        (
            "training.trainable_prefixes=[\"extra_head.\"]",
            "extra_head.",
        ),
    ] {
        let dir = common::tempdir();
        let e = train("baseline", dir.path(), &["training.steps=1", bad]).unwrap_err();
        assert!(format!("{e:#}").contains(says), "{bad}: {e:#}");
    }
}

/// The optimiser seam: a plain SGD (p ← p − lr·g), written here against `optim::Optimizer`,
/// replaces AdamW in a session of the embedded default (full fine-tuning) and trains it through the same
/// step: the weights move and the CE falls.
#[derive(Debug)]
struct Sgd {
    lr: f64,
    steps: u64,
}

impl wmtp_host::optim::Optimizer for Sgd {
    fn steps_taken(&self) -> u64 {
        self.steps
    }
    fn lr(&self, _: wmtp_host::model::ParamGroup) -> f64 {
        self.lr
    }
    fn update_module(
        &mut self,
        module: &mut dyn wmtp_host::model::VisitParams,
        prefix: &str,
        grads: &wmtp_host::model::grads::Grads,
        gscale: f64,
    ) -> anyhow::Result<()> {
        let mut err = None;
        module.visit_mut(prefix, &mut |name, p| {
            let (Some(g), Some(var)) = (grads.by_name.get(name), p.var()) else {
                return;
            };
            let w = var.as_tensor();
            let step = g.to_dtype(w.dtype()).and_then(|g| g * (self.lr * gscale));
            if let Err(e) = step.and_then(|s| w - s).and_then(|new| var.set(&new)) {
                err = Some(e);
            }
        });
        err.map_or(Ok(()), |e| Err(e.into()))
    }
    fn finish_step(&mut self) {
        self.steps += 1;
    }
    fn state(&self) -> (std::collections::HashMap<String, candle_core::Tensor>, u64) {
        (Default::default(), self.steps)
    }
    fn load_state(
        &mut self,
        _: std::collections::HashMap<String, candle_core::Tensor>,
        step: u64,
    ) -> anyhow::Result<()> {
        self.steps = step;
        Ok(())
    }
    fn sharded_slots(&self) -> &'static [&'static str] {
        &[]
    }
}

#[test]
fn a_second_optimiser_trains_through_the_optimizer_trait() {
    use wmtp_host::model::VisitParams;
    let dir = common::tempdir();
    let set: Vec<String> = vec![
        format!("checkpoint.dir={}", dir.path().display()),
        "training.use_lora=false".into(),
        "training.batch_size=4".into(),
        "training.max_grad_norm=0".into(),
        "runtime.eval_every=0".into(),
    ];
    let cfg = wmtp_host::train::config::RunConfig::load(None, &set).unwrap();
    let mut s =
        wmtp_host::train::session::Session::new(cfg, &common::shipped_plugin("baseline")).unwrap();
    s.optimizer = Box::new(Sgd { lr: 0.5, steps: 0 });
    let first = |s: &wmtp_host::train::session::Session| {
        let (n, p) = s
            .model
            .named_params()
            .into_iter()
            .find(|(n, p)| p.is_trainable() && n.contains("wq"))
            .unwrap();
        (n, p.tensor().copy().unwrap()) // a copy: the update writes into the Var's storage
    };
    let (name, before) = first(&s);
    let mut ces = Vec::new();
    for step in 0..12 {
        ces.push(
            wmtp_host::train::session_step::train_step(&mut s, step)
                .unwrap()
                .ce,
        );
    }
    let (_, after) = first(&s);
    assert!(
        common::max_abs_diff(&before, &after) > 0.0,
        "{name} did not move"
    );
    assert_eq!(s.optimizer.steps_taken(), 12);
    let (a, b) = (mean(&ces[..3]), mean(&ces[9..]));
    assert!(b < a, "SGD did not lower the CE: {ces:?}");
}

/// `[[stages]]`: the extra heads alone (head 0's held-out CE unchanged), then everything (head 0 moves);
/// metrics carry the stage; resuming from a checkpoint inside stage 1, at the boundary and inside stage 2
/// reproduces the uninterrupted run's losses exactly; a bad stage key is an error naming it.
#[test]
fn stages_train_in_turn_and_resume_anywhere() {
    let stages = "stages=[{name = \"heads\", steps = 3, trainable_prefixes = [\"extra_heads.\"], lr = 0.01}, \
                  {name = \"joint\", steps = 3, lr = 0.005}]";
    let full = common::tempdir();
    let set = [stages, "checkpoint.every=1", "runtime.eval_every=3"];
    let a = train("baseline", full.path(), &set).unwrap();
    assert_eq!(a.losses.len(), 6, "training.steps is the stages' sum");
    let rows = metric_rows(&a.run_dir);
    let stage_of: Vec<u64> = rows
        .iter()
        .filter(|m| m.get("loss").is_some())
        .map(|m| m["stage"].as_u64().unwrap())
        .collect();
    assert_eq!(stage_of, [1, 1, 1, 2, 2, 2]);
    let h0: Vec<f64> = rows
        .iter()
        .filter_map(|m| m.get("val_ce_h0").and_then(|v| v.as_f64()))
        .collect();
    assert!(h0.len() >= 3, "{h0:?}");
    assert_eq!(h0[0], h0[1], "head 0 moved in the heads-only stage: {h0:?}");
    assert_ne!(
        h0[1], h0[2],
        "head 0 did not move in the joint stage: {h0:?}"
    );
    for at in [2usize, 3, 4] {
        let out = common::tempdir();
        let b = run(&RunOptions {
            resume: Some(full.path().join(format!("checkpoints/step-{at:06}"))),
            quiet: true,
            set: vec![format!("checkpoint.dir={}", out.path().display())],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(&a.losses[at..], &b.losses[..], "resumed at step {at}");
    }
    let dir = common::tempdir();
    let e = train("baseline", dir.path(), &["stages=[{steps = 0}]"]).unwrap_err();
    assert!(format!("{e:#}").contains("stages[0].steps"), "{e:#}");
}

/// The next-token-for-the-model recipe: LoRA in the trunk and head 0, heads 1..H−1 as whole blocks
/// (`trainable = ["lora", "heads"]`, `trainable_prefixes = ["*lora_", "extra_heads."]`), with
/// `detach_extra_heads` so only head 0's loss reaches the trunk. Head 0's held-out CE follows the
/// next-token-only run (`head_weights = [1, 0]`; clipping off, so AdamW sees the same gradient up to a
/// constant factor) and not the joint run's, head 1's falls; the checkpoint carries the trained head
/// blocks (`wmtp_trained_weights.safetensors`) and a resumed run reproduces the losses exactly.
#[test]
fn detached_heads_train_the_model_on_next_token_loss_only() {
    let common_set = [
        "training.steps=6",
        "runtime.eval_every=3",
        "training.max_grad_norm=0",
        "training.lr=0.01",
        "training.use_lora=true",
        "training.trainable=[\"lora\", \"heads\"]",
        "training.trainable_prefixes=[\"*lora_\", \"extra_heads.\"]",
        "checkpoint.every=3",
    ];
    let val = |extra: &[&str]| {
        let dir = common::tempdir();
        let mut set = common_set.to_vec();
        set.extend_from_slice(extra);
        let r = train("baseline", dir.path(), &set).unwrap_or_else(|e| panic!("{extra:?}: {e:#}"));
        let v: Vec<(f64, f64)> = metric_rows(&r.run_dir)
            .iter()
            .filter_map(|m| Some((m["val_ce_h0"].as_f64()?, m["val_ce_h1"].as_f64()?)))
            .collect();
        (dir, r, v)
    };
    let (dir, detached, v_det) = val(&["training.detach_extra_heads=true"]);
    let (_d1, _, v_ntp) = val(&["plugin.head_weights=[1.0, 0.0]"]);
    let (_d2, _, v_joint) = val(&[]);
    assert!(v_det.len() >= 3, "{v_det:?}");
    let last = v_det.len() - 1;
    for (d, n) in v_det.iter().zip(&v_ntp) {
        assert!(
            (d.0 - n.0).abs() < 1e-4,
            "head 0: detached {v_det:?} vs ntp {v_ntp:?}"
        );
    }
    assert!(
        (v_det[last].0 - v_joint[last].0).abs() > 1e-3,
        "detaching changed nothing: {v_det:?} vs joint {v_joint:?}"
    );
    assert!(
        v_det[last].1 < v_det[0].1 - 1e-3,
        "head 1 did not learn: {v_det:?}"
    );
    let ck = dir.path().join("checkpoints/step-000003");
    assert!(ck.join("adapter/wmtp_trained_weights.safetensors").exists());
    let out = common::tempdir();
    let resumed = run(&RunOptions {
        resume: Some(ck),
        quiet: true,
        set: vec![format!("checkpoint.dir={}", out.path().display())],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(&detached.losses[3..], &resumed.losses[..]);
}
