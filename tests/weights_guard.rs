//! The weights are guarded and runs resume anywhere: plugin metrics cannot overwrite the host's keys, a
//! non-finite gradient norm skips the step and keeps the weights, no checkpoint is written with a
//! non-finite parameter, leftovers of an interrupted save are cleaned, and resume validates `--set`,
//! checks the plugin's digest and works from any working directory.

use crate::common;

use std::path::{Path, PathBuf};
use wmtp_host::checkpoint::{self, TrainerState};
use wmtp_host::model::VisitParams;
use wmtp_host::run::{run, RunOptions};
use wmtp_host::train::config::RunConfig;
use wmtp_host::train::session::Session;

/// The default job (tiny model, bundled corpus), short, writing into `dir`.
fn short_run(dir: &Path, steps: u64) -> Vec<String> {
    vec![
        format!("checkpoint.dir={}", dir.display()),
        format!("training.steps={steps}"),
        "checkpoint.every=1".into(),
        "training.batch_size=2".into(),
        "runtime.eval_every=0".into(),
    ]
}

fn train(dir: &Path, pipeline: &Path, steps: u64) -> wmtp_host::run::RunSummary {
    run(&RunOptions {
        pipeline: Some(pipeline.to_path_buf()),
        set: short_run(dir, steps),
        quiet: true,
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn plugin_metrics_cannot_overwrite_the_hosts_keys() {
    let dir = common::tempdir();
    let spoof = common::fixture("test-plugins/hostile_spoof_metrics.wasm");
    let r = train(dir.path(), &spoof, 2);
    let text = std::fs::read_to_string(r.run_dir.join("metrics.jsonl")).unwrap();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v.get("loss").is_none() {
            // the final validation's own line: the plugin's validation metrics stay under val_plugin.
            assert!(v["val_loss"].as_f64().unwrap() > 0.0, "{line}");
            // (the plugin's −1, averaged over validation batches)
            let spoofed = v["val_plugin.val_loss"].as_f64().unwrap();
            assert!((spoofed + 1.0).abs() < 1e-9, "{line}");
            continue;
        }
        for k in ["loss", "grad_norm", "ce", "lr", "step"] {
            assert_ne!(
                v[k],
                serde_json::json!(-1.0),
                "host key {k} overwritten: {line}"
            );
            assert_eq!(v[format!("plugin.{k}")], serde_json::json!(-1.0), "{line}");
        }
        assert!(v["loss"].as_f64().unwrap() > 0.0);
    }
}

fn session(dir: &Path) -> Session {
    let cfg = RunConfig::load(None, &short_run(dir, 2)).unwrap();
    Session::new(cfg, &common::shipped_plugin("baseline")).unwrap()
}

/// (name, tensor) of the first trainable parameter.
fn first_trainable(s: &Session) -> (String, candle_core::Tensor) {
    let (n, p) = s
        .model
        .named_params()
        .into_iter()
        .find(|(_, p)| p.is_trainable())
        .unwrap();
    (n, p.tensor().clone())
}

#[test]
fn a_non_finite_gradient_norm_skips_the_update() {
    let dir = common::tempdir();
    let mut s = session(dir.path());
    let (name, before) = first_trainable(&s);
    let inf = (before.ones_like().unwrap() * f64::INFINITY).unwrap();
    s.grads.add(&name, &inf).unwrap();
    let mut rep = wmtp_host::train::step::StepReport::default();
    let step_before = s.optimizer.steps_taken();
    wmtp_host::train::step::apply(
        &mut s.model,
        &mut wmtp_host::parallel::strategy::NoSharding,
        s.value_head.as_mut(),
        s.weigher.as_mut(),
        s.optimizer.as_mut(),
        &mut s.grads,
        1.0,
        &mut rep,
    )
    .unwrap();
    assert!(rep.skipped && !rep.grad_norm.is_finite(), "{rep:?}");
    let (_, after) = first_trainable(&s);
    assert_eq!(
        common::max_abs_diff(&before, &after),
        0.0,
        "weights changed"
    );
    assert_eq!(
        s.optimizer.steps_taken(),
        step_before + 1,
        "the schedule advances"
    );
    assert!(s.grads.by_name.is_empty());
}

#[test]
fn no_checkpoint_is_written_with_a_non_finite_parameter() {
    let dir = common::tempdir();
    let mut s = session(dir.path());
    let st = TrainerState {
        format: checkpoint::CHECKPOINT_FORMAT,
        step: 1,
        epoch: 0,
        index: 0,
        best_val: None,
        pipeline: common::shipped_plugin("baseline").display().to_string(),
        pipeline_sha256: String::new(),
    };
    let (name, t) = first_trainable(&s);
    let mut vals = common::values(&t);
    vals[0] = f32::NAN;
    vals[1] = f32::INFINITY;
    let poisoned = candle_core::Tensor::from_vec(vals, t.shape(), t.device()).unwrap();
    s.model.visit_mut("", &mut |n, p| {
        if n == name {
            p.set_value(poisoned.clone()).unwrap();
        }
    });
    let e = format!(
        "{:#}",
        checkpoint::save(dir.path(), "step-000001", &mut s, &st).unwrap_err()
    );
    assert!(
        e.contains(&name) && e.contains("2 non-finite values"),
        "{e}"
    );
    let ckpts = dir.path().join("checkpoints");
    let left: Vec<_> = std::fs::read_dir(&ckpts)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "a refused save left {left:?}");
}

#[test]
fn leftovers_of_an_interrupted_save_are_cleaned_up() {
    let dir = common::tempdir();
    let root = dir.path().join("checkpoints");
    for d in [
        ".step-000005.tmp",
        ".step-000002.old",
        "step-000001",
        ".step-000001.old",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
        std::fs::write(root.join(d).join("trainer_state.json"), d).unwrap();
    }
    let touched = checkpoint::clean_leftovers(dir.path()).unwrap();
    assert_eq!(touched.len(), 3, "{touched:?}");
    let mut names: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    // the .old of a checkpoint whose replacement never arrived is put back; the rest goes
    assert_eq!(names, ["step-000001", "step-000002"]);
    assert_eq!(
        std::fs::read_to_string(root.join("step-000002/trainer_state.json")).unwrap(),
        ".step-000002.old"
    );
    assert_eq!(
        checkpoint::latest(dir.path()).unwrap(),
        root.join("step-000002")
    );
}

#[test]
fn resume_validates_overrides_and_checks_the_plugin() {
    let dir = common::tempdir();
    let r = train(dir.path(), &common::shipped_plugin("baseline"), 2);
    let resume = |set: Vec<String>, pipeline: Option<PathBuf>, allow: bool| {
        run(&RunOptions {
            resume: Some(r.run_dir.clone()), // a run folder: its latest checkpoint
            pipeline,
            allow_plugin_change: allow,
            set,
            quiet: true,
            ..Default::default()
        })
    };
    let e = format!(
        "{:#}",
        resume(vec!["training.lr=-1".into()], None, false).unwrap_err()
    );
    assert!(e.contains("training.lr must be > 0"), "{e}");
    // the same plugin with one more custom section: other bytes, same behaviour
    let mut bytes = std::fs::read(common::shipped_plugin("baseline")).unwrap();
    bytes.extend_from_slice(&[0, 4, 3, b'w', b'h', b'y']);
    let other = dir.path().join("baseline-rebuilt.wasm");
    std::fs::write(&other, bytes).unwrap();
    let e = format!(
        "{:#}",
        resume(vec![], Some(other.clone()), false).unwrap_err()
    );
    assert!(
        e.contains("--allow-plugin-change") && e.contains("sha256"),
        "{e}"
    );
    let more = resume(vec!["training.steps=3".into()], Some(other), true).unwrap();
    assert_eq!(more.losses.len(), 1, "resumed at 2, ran to 3");
}

#[test]
fn resume_works_from_another_working_directory() {
    let dir = common::tempdir();
    let r = train(dir.path(), &common::shipped_plugin("baseline"), 2);
    let elsewhere = common::tempdir();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wmtp"))
        .current_dir(elsewhere.path())
        .args(["run", "--resume"])
        .arg(r.last_checkpoint.canonicalize().unwrap())
        .args(["--set", "training.steps=3"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("done: 1 steps (resumed at step 2, now at 3)"),
        "{err}"
    );
}
