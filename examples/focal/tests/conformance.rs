//! The example plugin passes wmtp's conformance kit, and its coefficients are the derivatives of its loss.

use std::path::PathBuf;
use std::sync::Arc;
use wmtp_host::plugin::conformance::{assert_conformant, synthetic_batch};
use wmtp_host::plugin::{Plugin, PluginLimits, PluginRuntime};

fn wasm() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../focal.wasm");
    assert!(
        p.exists(),
        "{} missing: run scripts/build-plugins.sh",
        p.display()
    );
    p
}

#[test]
fn focal_is_conformant() {
    assert_conformant(&wasm(), "gamma = 2.0");
    assert_conformant(&wasm(), "gamma = 0");
}

#[test]
fn focal_coefficients_are_derivatives() {
    let rt = Arc::new(PluginRuntime::new(PluginLimits::default()).unwrap());
    let mut p = Plugin::load(&rt, &wasm()).unwrap();
    p.configure("gamma = 1.5").unwrap();
    let batch = synthetic_batch(3, 9, 2, &[], 4, false);
    let c = p.weigh(&batch, true).unwrap();
    for i in (0..batch.ce.len())
        .filter(|&i| batch.ce_mask[i] != 0)
        .take(8)
    {
        let mut at = |d: f32| {
            let mut b = batch.clone();
            b.ce[i] += d;
            p.weigh(&b, true).unwrap().loss
        };
        let fd = (at(1e-3) - at(-1e-3)) / 2e-3;
        assert!(
            (fd - c.ce[i] as f64).abs() < 1e-3 * fd.abs().max(1e-3),
            "entry {i}: {fd} vs {}",
            c.ce[i]
        );
    }
}
