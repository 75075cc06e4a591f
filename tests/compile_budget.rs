//! The compile budget (plugin-host/src/compile_budget.rs): our plugins' measured needs against it, generated
//! compile bombs refused before cranelift sees them, and the compile time limit.

use crate::common;
use crate::hostile_plugins::{good_plugin_still_runs, load_error, runtime};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wmtp_plugin_host::{PluginLimits, PluginRuntime};

#[test]
fn the_compile_budget_leaves_ten_times_what_our_plugins_need() {
    use wmtp_plugin_host::{measure_code as measure, CompileBudget};
    let b = CompileBudget::default();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files: Vec<PathBuf> = ["baseline", "critic", "rho1", "verifiable"]
        .iter()
        .map(|p| root.join(format!("plugins/{p}.wasm")))
        .collect();
    files.push(root.join("examples/focal.wasm"));
    // the Python example (CPython inside) is the largest plugin we know; scripts/test.sh builds it
    files.push(root.join("examples/python-focal.wasm"));
    for f in files.iter().filter(|f| f.exists()) {
        let s = measure(&std::fs::read(f).unwrap(), &b).unwrap();
        println!("{}: {s:?}", f.display());
        assert!(
            s.functions * 10 <= b.max_functions,
            "{}: {s:?}",
            f.display()
        );
        assert!(
            s.code_bytes * 10 <= b.max_code_bytes,
            "{}: {s:?}",
            f.display()
        );
        assert!(
            s.largest_body * 10 <= b.max_body_bytes,
            "{}: {s:?}",
            f.display()
        );
        assert!(s.most_locals * 10 <= b.max_locals, "{}: {s:?}", f.display());
        assert!(
            s.deepest_nesting * 10 <= b.max_nesting,
            "{}: {s:?}",
            f.display()
        );
    }
}

/// A component holding one core module with `funcs` (WAT), written to `dir`.
fn component_with(dir: &std::path::Path, name: &str, funcs: &str) -> PathBuf {
    let bytes = wat::parse_str(format!("(component (core module {funcs}))")).unwrap();
    let out = dir.join(format!("{name}.wasm"));
    std::fs::write(&out, bytes).unwrap();
    out
}

#[test]
fn compile_bombs_are_refused_before_compiling() {
    // generated here, not committed: each passes wasmparser's validation and each once cost cranelift
    // minutes or gigabytes (issue 22)
    let rt = runtime();
    let dir = common::tempdir();
    let deep = format!("(func {} {})", "(block ".repeat(9_000), ")".repeat(9_000));
    let many = "(func)".repeat(150_001);
    let long = format!("(func {})", "nop ".repeat(6 << 20));
    let locals = format!("(func {})", "(local i64) ".repeat(60_000));
    for (name, funcs, want) in [
        ("deep", deep.as_str(), "nests blocks more than 8192 deep"),
        ("many", many.as_str(), "more than 150000 functions"),
        ("long", long.as_str(), "bytes long (at most 5242880 bytes"),
        ("locals", locals.as_str(), "more than 50000 locals"),
    ] {
        let t = Instant::now();
        let err = load_error(&rt, &component_with(dir.path(), name, funcs));
        assert!(
            err.contains("refused before compiling") && err.contains(want),
            "{name}: {err}"
        );
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{name}: {:?}",
            t.elapsed()
        );
    }
    good_plugin_still_runs(&rt);
}

#[test]
fn a_compile_past_its_time_limit_is_stopped() {
    let limits = PluginLimits {
        compile: wmtp_plugin_host::CompileBudget {
            time: Duration::from_millis(1),
            ..Default::default()
        },
        ..Default::default()
    };
    let rt = Arc::new(
        PluginRuntime::with_options(limits, Arc::new(|x: &[f64]| Ok(x.to_vec())), None).unwrap(),
    );
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plugins/baseline.wasm");
    let err = load_error(&rt, &path);
    assert!(
        err.contains("compiling took longer than 0 s (runtime.plugin_compile_s)"),
        "{err}"
    );
}
