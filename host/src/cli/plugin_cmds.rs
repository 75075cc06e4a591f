//! `wmtp plugin describe | check | new | build`: a plugin's manifest, the conformance kit, a new plugin
//! crate from a template, and building a crate into a component with rustup's bundled linker (no
//! environment variables to set by hand).

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use wmtp_plugin_host::conformance::check_plugin;
use wmtp_plugin_host::{describe_manifest, plugin_table_of};
use wmtp_plugin_host::{Plugin, PluginLimits, PluginRuntime};

/// `wmtp plugin …`.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Print a plugin's manifest and config keys.
    Describe {
        /// The plugin (.wasm component).
        plugin: PathBuf,
    },
    /// Run the conformance checks on plugins (answers, determinism, state, derivatives by finite
    /// differences, time budget); exits non-zero if any fails.
    Check {
        /// The plugins (.wasm components).
        #[arg(required = true)]
        plugins: Vec<PathBuf>,
        /// A run config whose `[plugin]` table (or, without one, the whole file) configures the plugin.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Time budget for one call on a 64k-token × 4-head batch, in milliseconds.
        #[arg(long, default_value_t = 100)]
        budget_ms: u64,
    },
    /// Write a new plugin crate NAME/ (a working pipeline to start from, on wmtp-sdk).
    New {
        /// The crate's name (also its directory).
        name: String,
        /// The wmtp-sdk crate to depend on (default: the SDK this wmtp was built from).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Build a plugin crate (Rust, wmtp-sdk) into DIR/<crate name>.wasm.
    Build {
        /// The crate's directory.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
}

/// Runs a `wmtp plugin` subcommand.
pub fn run(cmd: PluginCommand) -> Result<()> {
    match cmd {
        PluginCommand::Describe { plugin } => {
            let rt = Arc::new(PluginRuntime::new(PluginLimits::default())?);
            let p = Plugin::load(&rt, &plugin)?;
            print!("{}", describe_manifest(p.manifest(), p.contract()));
            Ok(())
        }
        PluginCommand::Check {
            plugins,
            config,
            budget_ms,
        } => check(&plugins, config.as_deref(), budget_ms),
        PluginCommand::New { name, sdk } => {
            let dir = super::plugin_template::write_crate(&name, sdk.as_deref())?;
            println!(
                "wrote {0}/ — next: wmtp plugin build {0} && wmtp plugin check {0}/{1}.wasm",
                dir.display(),
                name
            );
            Ok(())
        }
        PluginCommand::Build { dir } => {
            let out = build(&dir)?;
            println!("built {}", out.display());
            Ok(())
        }
    }
}

fn check(plugins: &[PathBuf], config: Option<&Path>, budget_ms: u64) -> Result<()> {
    let cfg = match config {
        Some(p) => plugin_table_of(p)?,
        None => String::new(),
    };
    let mut failed = 0;
    for p in plugins {
        let report = check_plugin(p, &cfg, Duration::from_millis(budget_ms))?;
        println!("{report}");
        if let Some(t) = report.big_batch_time {
            println!(
                "  (64k tokens × 4 heads: {:.2} ms per weigh)",
                t.as_secs_f64() * 1e3
            );
        }
        failed += !report.passed() as usize;
    }
    if failed > 0 {
        bail!("{failed} of {} plugin(s) failed conformance", plugins.len());
    }
    Ok(())
}

fn run_ok(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("running {what} (is rustup's toolchain on PATH?)"))?;
    if !out.status.success() {
        bail!(
            "{what} failed:\n{}",
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Builds the plugin crate in `dir` for `wasm32-unknown-unknown` as a component (rustup's
/// `wasm-component-ld`, no WASI imports; the target is added when missing) and copies it to
/// `dir/<crate name>.wasm`.
pub fn build(dir: &Path) -> Result<PathBuf> {
    let manifest = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .with_context(|| format!("reading {} (a plugin crate?)", manifest.display()))?;
    let toml: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", manifest.display()))?;
    let Some(name) = toml
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
    else {
        bail!("{}: no [package] name", manifest.display());
    };
    let target = "wasm32-unknown-unknown";
    let installed = run_ok(
        Command::new("rustup").args(["target", "list", "--installed"]),
        "rustup target list",
    )?;
    if !installed.lines().any(|l| l.trim() == target) {
        eprintln!("adding the {target} target with rustup");
        run_ok(
            Command::new("rustup").args(["target", "add", target]),
            "rustup target add",
        )?;
    }
    let sysroot = run_ok(Command::new("rustc").args(["--print", "sysroot"]), "rustc")?;
    let host = run_ok(Command::new("rustc").arg("-vV"), "rustc -vV")?
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .context("rustc -vV printed no host")?;
    let bin = Path::new(sysroot.trim())
        .join("lib/rustlib")
        .join(host)
        .join("bin");
    let flags = format!(
        "-Ctarget-feature=+simd128 -Clink-arg=--wasm-ld-path={} -Clink-arg=--wasi-adapter=none",
        bin.join("gcc-ld/wasm-ld").display()
    );
    let meta = run_ok(
        Command::new("cargo")
            .args([
                "metadata",
                "--format-version",
                "1",
                "--no-deps",
                "--manifest-path",
            ])
            .arg(&manifest),
        "cargo metadata",
    )?;
    let meta: serde_json::Value = serde_json::from_str(&meta).context("cargo metadata")?;
    let target_dir = PathBuf::from(meta["target_directory"].as_str().unwrap_or("target"));
    let status = Command::new("cargo")
        .args(["build", "--release", "--target", target, "--manifest-path"])
        .arg(&manifest)
        .env(
            "CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER",
            bin.join("wasm-component-ld"),
        )
        .env("CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS", flags)
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build of {} failed", manifest.display());
    }
    let lib = name.replace('-', "_");
    let built = target_dir
        .join(target)
        .join("release")
        .join(format!("{lib}.wasm"));
    let out = dir.join(format!("{name}.wasm"));
    std::fs::copy(&built, &out).with_context(|| {
        format!(
            "copying {} (is the crate a cdylib?) to {}",
            built.display(),
            out.display()
        )
    })?;
    Ok(out)
}
