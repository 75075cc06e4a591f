//! The example plugin passes wmtp's conformance kit, which includes the check that its coefficients are
//! the derivatives of its loss (central differences).

use std::path::PathBuf;
use wmtp_plugin_host::conformance::assert_conformant;

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
    assert_conformant(&wasm(), "gamma = 1.5");
}
