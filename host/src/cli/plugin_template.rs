//! `wmtp plugin new NAME`: a plugin crate that builds and passes the conformance kit as written — a
//! scaled plain MTP loss with one setting — for authors to edit.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The SDK this binary was built from (used when `--sdk` is not given and it still exists).
const BUILT_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../sdk");

const LIB_RS: &str = r#"//! {{name}}: a wmtp pipeline plugin. Per token ℓ = scale · CE, averaged per head over valid tokens,
//! then over heads; the plugin returns ∂L/∂CE (docs/design.md of wmtp explains the contract).
use wmtp_sdk::*;

settings! {
    /// The `[plugin]` table of a run config.
    pub struct Settings {
        /// multiplier of every token's loss (> 0)
        scale: f64 = 1.0,
    }
}

/// The pipeline.
#[derive(Default)]
pub struct Pipe(Settings);

impl Pipeline for Pipe {
    type Settings = Settings;
    fn manifest() -> Manifest {
        ManifestBuilder::new("{{name}}", env!("CARGO_PKG_VERSION"))
            .describe("scaled MTP cross-entropy (edit me)")
            .build()
    }
    fn configure(&mut self, s: Settings) -> Result<(), String> {
        check_range("scale", s.scale, 1e-6, 1e6)?;
        self.0 = s;
        Ok(())
    }
    fn weigh(&mut self, batch: &Batch, _train: bool) -> Result<Coefficients, String> {
        let scale = self.0.scale;
        let (ce, loss) = per_token_loss(&BatchView::new(batch)?, |ce| (scale * ce, scale));
        Ok(Coefficients::of_ce(ce, loss))
    }
}

export_pipeline!(Pipe);
"#;

/// Writes `NAME/` (Cargo.toml, src/lib.rs, tests/conformance.rs, .gitignore) depending on the SDK at
/// `sdk` (default: the one this wmtp was built from) by a relative path, with wmtp-plugin-host (beside
/// the SDK) as the tests' dependency; refuses an existing directory and names that are not crate names.
pub fn write_crate(name: &str, sdk: Option<&Path>) -> Result<PathBuf> {
    let ok = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        bail!("`{name}` is not a crate name (a letter, then letters, digits, - or _)");
    }
    let sdk = match sdk {
        Some(p) => p.to_path_buf(),
        None => PathBuf::from(BUILT_SDK),
    };
    let sdk = sdk.canonicalize().with_context(|| {
        format!(
            "the wmtp SDK at {} (give --sdk PATH/TO/wmtp/sdk)",
            sdk.display()
        )
    })?;
    if !sdk.join("Cargo.toml").exists() {
        bail!("{} is not the wmtp-sdk crate", sdk.display());
    }
    let dir = PathBuf::from(name);
    if dir.exists() {
        bail!("{} already exists", dir.display());
    }
    std::fs::create_dir_all(dir.join("src"))
        .with_context(|| format!("creating {}", dir.display()))?;
    std::fs::create_dir_all(dir.join("tests"))
        .with_context(|| format!("creating {}", dir.join("tests").display()))?;
    // the SDK by a path relative to the crate, so the checkout and the crate can move together
    let here = dir.canonicalize()?;
    let sdk_rel = relative(&here, &sdk);
    let plugin_host = sdk.parent().unwrap_or(&sdk).join("plugin-host");
    let host_rel = relative(&here, &plugin_host);
    let cargo = format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"
publish = false

[lib]
crate-type = ["cdylib", "rlib"]   # cdylib: the .wasm component; rlib: native unit tests

[dependencies]
wmtp-sdk = {{ path = {sdk:?} }}

[dev-dependencies]   # tests/conformance.rs: wmtp's conformance kit on the built .wasm
wmtp-plugin-host = {{ path = {host:?} }}

[profile.release]
opt-level = 3

# a crate of its own, even inside another workspace
[workspace]
"#,
        sdk = sdk_rel.display().to_string(),
        host = host_rel.display().to_string()
    );
    std::fs::write(dir.join("Cargo.toml"), cargo)?;
    std::fs::write(dir.join("src/lib.rs"), LIB_RS.replace("{{name}}", name))?;
    std::fs::write(dir.join(".gitignore"), "/target/\n*.wasm\nCargo.lock\n")?;
    std::fs::write(
        dir.join("tests/conformance.rs"),
        CONFORMANCE_RS.replace("{{name}}", name),
    )?;
    Ok(dir)
}

const CONFORMANCE_RS: &str = r#"//! {{name}} passes wmtp's conformance kit (shapes, masks, determinism, state, bad configs, and that the
//! coefficients are the derivatives of the reported loss). Build first: `wmtp plugin build .`
use std::path::PathBuf;
use wmtp_plugin_host::conformance::assert_conformant;

#[test]
fn the_plugin_is_conformant() {
    let wasm = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("{{name}}.wasm");
    assert!(wasm.exists(), "{} missing: run `wmtp plugin build .` first", wasm.display());
    assert_conformant(&wasm, "");
    assert_conformant(&wasm, "scale = 2.5");
}
"#;

/// `to` as a path relative to the directory `from` (both absolute); `to` itself when they share no root.
fn relative(from: &Path, to: &Path) -> PathBuf {
    let (a, b): (Vec<_>, Vec<_>) = (from.components().collect(), to.components().collect());
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    if common == 0 {
        return to.to_path_buf();
    }
    let mut out = PathBuf::new();
    for _ in common..a.len() {
        out.push("..");
    }
    for c in &b[common..] {
        out.push(c);
    }
    out
}
