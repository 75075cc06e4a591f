//! Fixture paths (made by `scripts/fixtures.sh`) and temporary directories, for every test crate
//! (the plugin host's tests include this file alone: it needs no tensors).
#![allow(dead_code)]

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

/// A fresh temporary directory.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A shipped plugin, `plugins/NAME.wasm`; fails with instructions when it has not been built.
pub fn shipped_plugin(name: &str) -> PathBuf {
    let p = root().join("plugins").join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "{} missing — run scripts/build-plugins.sh (the README's test command does)",
        p.display()
    );
    p
}
