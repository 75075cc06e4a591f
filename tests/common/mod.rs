//! Shared helpers for the host's integration tests: fixture paths, tensor comparisons, a short training run.
#![allow(dead_code)]

#[path = "paths.rs"]
mod paths;
#[allow(unused_imports)]
pub use paths::{fixture, root, shipped_plugin, tempdir};

use candle_core::Tensor;

/// Largest absolute difference of two tensors.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a.to_dtype(candle_core::DType::F32).unwrap() - b.to_dtype(candle_core::DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Flattened f32 values of a tensor.
pub fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(candle_core::DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Runs the `wmtp` binary with `args`: (exit status success, stderr).
pub fn wmtp(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wmtp"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// [`wmtp`] that must succeed: its stderr.
pub fn wmtp_ok(args: &[&str]) -> String {
    let (ok, err) = wmtp(args);
    assert!(ok, "wmtp {args:?} failed:\n{err}");
    err
}

/// A short training run of a shipped `pipeline` into `dir` on the embedded default (tiny preset, bundled
/// corpus; batch 4, max_length 240, no validation, a 6-step Rho-1 reference stage), with `extra`
/// `--set` overrides after those.
pub fn train(
    pipeline: &str,
    dir: &std::path::Path,
    extra: &[&str],
) -> anyhow::Result<wmtp_host::run::RunSummary> {
    let mut set: Vec<String> = vec![
        format!("checkpoint.dir={}", dir.display()),
        "training.batch_size=4".into(),
        "data.max_length=240".into(),
        "runtime.eval_every=0".into(),
        "reference.baseline_steps=6".into(),
    ];
    set.extend(extra.iter().map(|s| s.to_string()));
    wmtp_host::run::run(&wmtp_host::run::RunOptions {
        pipeline: Some(shipped_plugin(pipeline)),
        set,
        quiet: true,
        ..Default::default()
    })
}
