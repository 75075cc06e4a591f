//! A pipeline written in Python (examples/python-focal, built by componentize-py) is a first-class
//! plugin: it passes the conformance kit, agrees with the Rust focal plugin on the same batch, and trains
//! the embedded default.

use crate::common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use wmtp_host::run::{run, RunOptions};
use wmtp_plugin_host::conformance::{check_plugin, synthetic_batch};
use wmtp_plugin_host::{Plugin, PluginLimits, PluginRuntime};

fn example(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../examples/{name}.wasm"));
    assert!(
        p.exists(),
        "{} missing: run scripts/build-plugins.sh",
        p.display()
    );
    p
}

#[test]
fn python_focal_passes_the_kit_and_matches_the_rust_focal() {
    // CPython in Wasm weighs 64k tokens × 4 heads in about a second: a budget for that, not Rust's
    let report = check_plugin(
        &example("python-focal"),
        "gamma = 1.5",
        Duration::from_secs(10),
    )
    .unwrap();
    assert!(report.passed(), "{report}");

    let rt = Arc::new(PluginRuntime::new(PluginLimits::default()).unwrap());
    let mut py = Plugin::load(&rt, &example("python-focal")).unwrap();
    let mut rs = Plugin::load(&rt, &example("focal")).unwrap();
    for gamma in ["0", "1.5", "2.0"] {
        let cfg = format!("gamma = {gamma}");
        py.configure(&cfg).unwrap();
        rs.configure(&cfg).unwrap();
        let batch = synthetic_batch(5, 12, 4, &[], 3, true);
        let (a, b) = (
            py.weigh(&batch, true).unwrap(),
            rs.weigh(&batch, true).unwrap(),
        );
        assert!(
            (a.loss - b.loss).abs() <= 1e-6 * b.loss.abs().max(1.0),
            "γ {gamma}: loss {} vs {}",
            a.loss,
            b.loss
        );
        for (i, (x, y)) in a.ce.iter().zip(&b.ce).enumerate() {
            assert!(
                (x - y).abs() <= 1e-6 * y.abs().max(1e-6),
                "γ {gamma} entry {i}: {x} vs {y}"
            );
        }
    }
}

#[test]
fn python_focal_trains_the_embedded_default() {
    let dir = common::tempdir();
    let r = run(&RunOptions {
        pipeline: Some(example("python-focal")),
        set: vec![
            format!("checkpoint.dir={}", dir.path().display()),
            "training.steps=20".into(),
        ],
        quiet: true,
        ..Default::default()
    })
    .unwrap();
    let (first, last) = (r.ces[0], *r.ces.last().unwrap());
    assert!(r.losses.iter().all(|l| l.is_finite()));
    assert!(last < first - 0.1, "plain CE should fall: {first} → {last}");
}
