//! Shared helpers for the integration tests: fixture paths (made by `scripts/fixtures.sh`) and tensor
//! comparisons.
#![allow(dead_code)]

use candle_core::Tensor;
use std::path::PathBuf;

/// Path of a fixture under the repository's `.cache/`; fails with instructions when it is missing.
pub fn fixture(rel: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(".cache")
        .join(rel);
    assert!(p.exists(), "missing test fixture {} — run `scripts/fixtures.sh` first (the README's test command does)", p.display());
    p
}

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

/// A fresh temporary directory.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}
