//! The plugin author's kit end to end, as a newcomer runs it: `wmtp plugin new demo`, `wmtp plugin build
//! demo`, `wmtp plugin check demo/demo.wasm`, and `wmtp plugin describe` showing the settings' keys; the
//! new crate names the SDK and the kit by relative paths and carries a kit test.

use std::path::PathBuf;
use std::process::Command;

fn wmtp(dir: &std::path::Path, args: &[&str]) -> String {
    // the new crate's dependencies are compiled once into the workspace's target folder
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/plugin-kit");
    let out = Command::new(env!("CARGO_BIN_EXE_wmtp"))
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "wmtp {args:?} failed:\n{text}");
    text
}

#[test]
fn new_build_check_describe() {
    let tmp = tempfile::tempdir().unwrap();
    wmtp(tmp.path(), &["plugin", "new", "demo"]);
    // the SDK and the kit by paths relative to the crate, both real crates; a kit test ready to run
    let cargo = std::fs::read_to_string(tmp.path().join("demo/Cargo.toml")).unwrap();
    for dep in ["wmtp-sdk", "wmtp-plugin-host"] {
        let line = cargo.lines().find(|l| l.starts_with(dep)).unwrap();
        let rel = line.split('"').nth(1).unwrap();
        assert!(rel.starts_with(".."), "{line}");
        assert!(
            tmp.path()
                .join("demo")
                .join(rel)
                .join("Cargo.toml")
                .exists(),
            "{line}"
        );
    }
    assert!(tmp.path().join("demo/tests/conformance.rs").exists());
    wmtp(tmp.path(), &["plugin", "build", "demo"]);
    assert!(tmp.path().join("demo/demo.wasm").exists());
    let check = wmtp(tmp.path(), &["plugin", "check", "demo/demo.wasm"]);
    assert!(check.contains("0 failed"), "{check}");
    assert!(
        check.contains("derivatives of the reported loss"),
        "{check}"
    );
    let d = wmtp(tmp.path(), &["plugin", "describe", "demo/demo.wasm"]);
    assert!(
        d.contains("scale = 1.0") && d.contains("multiplier of every token's loss"),
        "{d}"
    );
    // an existing directory and a bad name are refused, nothing overwritten
    let again = Command::new(env!("CARGO_BIN_EXE_wmtp"))
        .args(["plugin", "new", "demo"])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(!again.status.success());
    let bad = Command::new(env!("CARGO_BIN_EXE_wmtp"))
        .args(["plugin", "new", "9 lives"])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a crate name"));
}
