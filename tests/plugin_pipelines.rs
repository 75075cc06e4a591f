//! The four shipped plugins, run as Wasm components: against an independent NumPy re-computation
//! (tests/reference/pipelines_reference.py), against design.md §5's golden facts, and coefficients checked as
//! true derivatives of the reported loss by finite differences.

use crate::common;

use std::path::PathBuf;
use std::sync::Arc;
use wmtp_plugin_host::conformance::{derivatives_match, synthetic_batch};
use wmtp_plugin_host::{Batch, Coefficients, InputKind, Plugin, PluginLimits, PluginRuntime};

const ALL: [InputKind; 4] = [
    InputKind::Values,
    InputKind::Reference,
    InputKind::Rewards,
    InputKind::Pairs,
];

fn plugin(name: &str, config: &str) -> Plugin {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} missing — run scripts/build-plugins.sh (the README's test command does)",
        path.display()
    );
    let rt = Arc::new(PluginRuntime::new(PluginLimits::default()).unwrap());
    let mut p = Plugin::load(&rt, &path).unwrap();
    p.configure(config).unwrap();
    p
}

fn batch_json(b: &Batch) -> serde_json::Value {
    serde_json::json!({
        "B": b.sequences, "T": b.positions, "H": b.heads, "ce": b.ce, "ce_mask": b.ce_mask,
        "target_mask": b.target_mask, "values": b.values, "ref_ce": b.ref_ce, "rewards": b.rewards,
        "pair_ids": b.pair_ids,
    })
}

fn close(a: f64, b: f64, what: &str) {
    assert!(
        (a - b).abs() <= 1e-6 + 1e-4 * b.abs(),
        "{what}: plugin {a} vs reference {b}"
    );
}

#[test]
fn plugins_match_the_numpy_reference() {
    let cases: Vec<(&str, &str, bool)> = vec![
        ("baseline", "", true),
        ("baseline", "", false),
        ("rho1", "", true),
        ("rho1", "", false),
        ("rho1", "k_percent = 0.3\nmode = \"absolute\"", true),
        ("rho1", "k_percent = 0.5\nmode = \"difficult\"", false),
        ("critic", "", true),
        ("critic", "[value_loss]\nhuber = true", true),
        (
            "critic",
            "[value_loss]\ntype = \"lambda_return\"\n[lambda]\nstart = 0.7\nend = 0.7",
            true,
        ),
        (
            "critic",
            "[value_loss]\ntype = \"lambda_return\"\n[lambda]\nstart = 0.7\nend = 0.7",
            false,
        ),
        (
            "critic",
            "[value_loss]\ntype = \"pairwise\"\npairwise_coef = 0.5",
            true,
        ),
        ("verifiable", "", true),
        ("verifiable", "", false),
        (
            "verifiable",
            "beta = 0.5\ntd_lambda = 0.8\n[ema]\nenabled = false",
            true,
        ),
        (
            "verifiable",
            "value_coef = 0.5\nnormalize = \"weights\"",
            true,
        ),
        (
            "verifiable",
            "advantage = \"mc\"\n[ema]\nenabled = false",
            true,
        ),
        ("verifiable", "advantage = \"mc\"", false),
    ];
    let mut json_cases = Vec::new();
    let mut ours: Vec<Coefficients> = Vec::new();
    for (i, (name, cfg, train)) in cases.iter().enumerate() {
        let batch = synthetic_batch(6, 13, 3, &ALL, 1000 + i as u64, true);
        let c = plugin(name, cfg).weigh(&batch, *train).unwrap();
        let table: toml::Table = toml::from_str(cfg).unwrap();
        json_cases.push(serde_json::json!({"plugin": name, "config": table, "train": train, "batch": batch_json(&batch)}));
        ours.push(c);
    }
    let dir = common::tempdir();
    let (inp, out) = (dir.path().join("cases.json"), dir.path().join("out.json"));
    std::fs::write(&inp, serde_json::to_string(&json_cases).unwrap()).unwrap();
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/pipelines_reference.py");
    let status = std::process::Command::new("python3")
        .arg(&script)
        .arg(&inp)
        .arg(&out)
        .status()
        .expect("python3 with numpy is needed (scripts/fixtures.sh installs numpy)");
    assert!(status.success(), "reference script failed");
    let reference: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    for ((name, cfg, train), (c, r)) in cases.iter().zip(ours.iter().zip(&reference)) {
        let what = format!("{name} [{}] train={train}", cfg.replace('\n', "; "));
        close(c.loss, r["loss"].as_f64().unwrap(), &format!("{what} loss"));
        let rce: Vec<f64> = serde_json::from_value(r["ce"].clone()).unwrap();
        // value-only plugins may return no CE coefficients (all zero)
        let ours_ce = if c.ce.is_empty() {
            vec![0.0; rce.len()]
        } else {
            c.ce.clone()
        };
        assert_eq!(ours_ce.len(), rce.len());
        for (i, (a, b)) in ours_ce.iter().zip(&rce).enumerate() {
            close(*a as f64, *b, &format!("{what} ce coefficient {i}"));
        }
        match (&c.values, r["values"].as_array()) {
            (None, None) => {}
            (Some(v), Some(rv)) => {
                for (i, (a, b)) in v.iter().zip(rv).enumerate() {
                    close(
                        *a as f64,
                        b.as_f64().unwrap(),
                        &format!("{what} value coefficient {i}"),
                    );
                }
            }
            (a, b) => panic!(
                "{what}: value coefficients present in plugin {} vs reference {}",
                a.is_some(),
                b.is_some()
            ),
        }
    }
}

/// A batch where every position is a target token: M[b,t,k] = 1 iff t + k + 1 < T.
fn dense_batch(b: u32, t: u32, h: u32, seed: u64) -> Batch {
    let mut x = synthetic_batch(b, t, h, &ALL, seed, false);
    x.target_mask = vec![1; (b * t) as usize];
    let (tu, hu) = (t as usize, h as usize);
    for i in 0..x.ce.len() {
        let (p, k) = ((i / hu) % tu, i % hu);
        let valid = p + k + 1 < tu;
        x.ce_mask[i] = valid as u8;
        // distinct CE values (ties-free)
        x.ce[i] = if valid {
            0.5 + ((i * 7919) % 10007) as f32 / 1000.0
        } else {
            0.0
        };
    }
    x
}

#[test]
fn rho1_selects_k_percent_per_head_and_leaves_late_rows_empty() {
    let batch = dense_batch(1, 102, 4, 3);
    for k_percent in [0.6, 0.25, 1.0] {
        let c = plugin("rho1", &format!("k_percent = {k_percent}"))
            .weigh(&batch, true)
            .unwrap();
        for k in 0..4usize {
            let n = 102 - k - 1;
            let sel = (0..102).filter(|&t| c.ce[t * 4 + k] != 0.0).count();
            assert!(
                (sel as f64 / n as f64 - k_percent).abs() <= 1.0 / n as f64 + 1e-9,
                "head {k}: {sel} of {n} selected for k_percent {k_percent}"
            );
            for t in (102 - k - 1)..102 {
                assert_eq!(c.ce[t * 4 + k], 0.0, "head {k} row {t} must be 0");
            }
            let ratio = c
                .metrics
                .iter()
                .find(|(m, _)| m == &format!("selected_ratio_h{k}"))
                .unwrap()
                .1;
            assert_eq!(ratio, sel as f64 / n as f64);
        }
    }
}

#[test]
fn critic_lambda_one_equals_monte_carlo() {
    let batch = synthetic_batch(6, 20, 2, &ALL, 5, true);
    let mc = plugin("critic", "").weigh(&batch, true).unwrap();
    let lr = plugin(
        "critic",
        "[value_loss]\ntype = \"lambda_return\"\n[lambda]\nstart = 1.0\nend = 1.0",
    )
    .weigh(&batch, true)
    .unwrap();
    assert!(
        (mc.loss - lr.loss).abs() < 1e-9,
        "{} vs {}",
        mc.loss,
        lr.loss
    );
    assert_eq!(mc.values, lr.values);
    assert!(
        mc.ce.iter().all(|&x| x == 0.0),
        "the critic never trains the policy CE"
    );
}

/// The conformance kit's central-difference check of CE (or V) coefficients against the reported loss.
fn finite_difference(name: &str, cfg: &str, perturb_values: bool) {
    let mut p = plugin(name, cfg);
    derivatives_match(&mut p, &ALL, perturb_values)
        .unwrap_or_else(|e| panic!("{name} [{cfg}]: {e:#}"));
}

#[test]
fn coefficients_are_true_derivatives() {
    finite_difference("baseline", "", false);
    finite_difference("rho1", "", false);
    finite_difference("rho1", "mode = \"absolute\"\nk_percent = 0.4", false);
    finite_difference("verifiable", "", false);
    finite_difference("verifiable", "normalize = \"weights\"", false);
    finite_difference("verifiable", "advantage = \"mc\"", false);
    finite_difference("critic", "", true);
    finite_difference("critic", "[value_loss]\nhuber = true", true);
    finite_difference("critic", "[value_loss]\ntype = \"pairwise\"", true);
    // λ-return with λ = 1: targets do not depend on V, so the semi-gradient is the full gradient
    finite_difference(
        "critic",
        "[value_loss]\ntype = \"lambda_return\"\n[lambda]\nstart = 1.0\nend = 1.0",
        true,
    );
}

#[test]
fn verifiable_ema_updates_after_steps_and_round_trips() {
    let mut p = plugin("verifiable", "[ema]\nwarmup = 2");
    let batch = synthetic_batch(4, 16, 2, &ALL, 9, false);
    let first = p.weigh(&batch, true).unwrap();
    let metric = |c: &Coefficients, k: &str| c.metrics.iter().find(|(m, _)| m == k).unwrap().1;
    assert_eq!(
        (metric(&first, "ema_mean"), metric(&first, "ema_std")),
        (0.0, 1.0)
    );
    p.after_step(0).unwrap();
    let second = p.weigh(&batch, true).unwrap();
    // after one update (n = 1 ≤ warm-up) the EMA equals the step's statistics
    assert!((metric(&second, "ema_mean") - metric(&first, "adv_mean")).abs() < 1e-9);
    assert_ne!(
        first.ce, second.ce,
        "whitening with the new EMA changes the weights"
    );
}
