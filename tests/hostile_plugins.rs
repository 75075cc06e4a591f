//! Hostile plugins (tests/hostile/): each misbehaviour ends in an error that names the plugin, and the
//! same host then loads and runs a good plugin.

#[path = "common/paths.rs"]
mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wmtp_plugin_host::conformance::synthetic_batch;
use wmtp_plugin_host::{Plugin, PluginLimits, PluginRuntime};

fn test_plugin(name: &str) -> PathBuf {
    common::fixture(&format!("test-plugins/{name}.wasm"))
}

fn runtime() -> Arc<PluginRuntime> {
    runtime_with(Duration::from_millis(300))
}

/// A runtime with a 256 MiB memory cap and the given wall-clock cap per call.
fn runtime_with(call_timeout: Duration) -> Arc<PluginRuntime> {
    let limits = PluginLimits {
        call_timeout,
        memory_bytes: 256 << 20,
        ..Default::default()
    };
    Arc::new(PluginRuntime::with_options(limits, Arc::new(|x: &[f64]| x.to_vec()), None).unwrap())
}

/// After any failure the same runtime still loads and runs a good plugin.
fn good_plugin_still_runs(rt: &Arc<PluginRuntime>) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plugins/baseline.wasm");
    let mut p = Plugin::load(rt, &path).expect("baseline loads after a hostile plugin");
    let c = p
        .weigh(&synthetic_batch(2, 8, 2, &[], 1, false), true)
        .unwrap();
    assert!(c.loss > 0.0);
}

/// Loads and calls `weigh` on the hostile plugin `name`, returning the error text.
fn weigh_error(rt: &Arc<PluginRuntime>, name: &str) -> String {
    let mut p = Plugin::load(rt, &test_plugin(name))
        .unwrap_or_else(|e| panic!("{name} should load: {e:#}"));
    let batch = synthetic_batch(2, 8, 2, &[], 1, false);
    let err = format!(
        "{:#}",
        p.weigh(&batch, true)
            .expect_err("a hostile plugin must fail")
    );
    assert!(
        err.contains("plugin `hostile`") && err.contains(&format!("{name}.wasm")),
        "error must name the plugin: {err}"
    );
    // the instance is replaced: a second call fails the same way instead of crashing
    let again = format!("{:#}", p.weigh(&batch, true).expect_err("still hostile"));
    assert!(again.contains("plugin `hostile`"), "{again}");
    err
}

#[test]
fn infinite_loop_hits_the_wall_clock_cap() {
    let rt = runtime();
    let t = Instant::now();
    let err = weigh_error(&rt, "hostile_spin");
    assert!(err.contains("wall-clock limit"), "{err}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "two capped calls took {:?}",
        t.elapsed()
    );
    good_plugin_still_runs(&rt);
}

#[test]
fn four_gib_allocation_hits_the_memory_cap() {
    // a generous wall-clock cap: filling 256 MiB can take over 300 ms on a busy CI machine, and this
    // test is about the memory cap
    let rt = runtime_with(Duration::from_secs(20));
    let err = weigh_error(&rt, "hostile_oom");
    assert!(err.contains("memory limit of 256 MiB"), "{err}");
    good_plugin_still_runs(&rt);
}

#[test]
fn panic_text_appears_in_the_error() {
    let rt = runtime();
    let err = weigh_error(&rt, "hostile_panic");
    assert!(
        err.contains("hostile plugin panics on purpose (code 42)"),
        "{err}"
    );
    good_plugin_still_runs(&rt);
}

#[test]
fn wrong_output_length_is_rejected() {
    let rt = runtime();
    let err = weigh_error(&rt, "hostile_bad_len");
    assert!(
        err.contains("returned 31 CE coefficients") && err.contains("expected 32"),
        "{err}"
    );
    good_plugin_still_runs(&rt);
}

#[test]
fn nan_coefficients_are_rejected() {
    let rt = runtime();
    let err = weigh_error(&rt, "hostile_nan");
    assert!(
        err.contains("NaN") && err.contains("must be finite"),
        "{err}"
    );
    good_plugin_still_runs(&rt);
}

#[test]
fn log_flood_is_stopped() {
    let rt = runtime();
    let t = Instant::now();
    let err = weigh_error(&rt, "hostile_flood");
    assert!(err.contains("log flood"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5));
    good_plugin_still_runs(&rt);
}

#[test]
fn an_import_the_host_lacks_is_refused_at_load() {
    let rt = runtime();
    let err = format!(
        "{:#}",
        Plugin::load(&rt, &test_plugin("hostile_foreign_import")).unwrap_err()
    );
    assert!(
        err.contains("hostile_foreign_import.wasm")
            && err.contains("wasi:sockets/instance-network"),
        "{err}"
    );
    assert!(err.contains("does not provide"), "{err}");
    good_plugin_still_runs(&rt);
}

#[test]
fn an_incompatible_contract_version_is_refused() {
    let rt = runtime();
    let err = format!(
        "{:#}",
        Plugin::load(&rt, &test_plugin("hostile_old_contract")).unwrap_err()
    );
    assert!(
        err.contains("hostile_old_contract.wasm")
            && err.contains("wmtp:pipeline@0.0.9")
            && err.contains("@0.1.0"),
        "{err}"
    );
    good_plugin_still_runs(&rt);
}

#[test]
fn a_file_that_is_not_a_component_is_refused() {
    let rt = runtime();
    let dir = common::tempdir();
    let f = dir.path().join("garbage.wasm");
    std::fs::write(&f, b"\0asm\x01\0\0\0garbage").unwrap();
    let err = format!("{:#}", Plugin::load(&rt, &f).unwrap_err());
    assert!(
        err.contains("garbage.wasm") && err.contains("not a valid Wasm component"),
        "{err}"
    );
    let err = format!(
        "{:#}",
        Plugin::load(&rt, &dir.path().join("absent.wasm")).unwrap_err()
    );
    assert!(err.contains("absent.wasm"), "{err}");
    good_plugin_still_runs(&rt);
}

#[test]
fn fuel_cap_stops_a_loop_deterministically() {
    let limits = PluginLimits {
        fuel_per_call: Some(50_000_000),
        call_timeout: Duration::from_secs(30),
        ..Default::default()
    };
    let rt = Arc::new(
        PluginRuntime::with_options(limits, Arc::new(|x: &[f64]| x.to_vec()), None).unwrap(),
    );
    let mut p = Plugin::load(&rt, &test_plugin("hostile_spin")).unwrap();
    let err = format!(
        "{:#}",
        p.weigh(&synthetic_batch(1, 4, 1, &[], 1, false), true)
            .unwrap_err()
    );
    assert!(err.contains("ran out of fuel"), "{err}");
    good_plugin_still_runs(&rt);
}

#[test]
fn a_wasi_p2_component_runs_but_sees_no_files() {
    let rt = runtime();
    let mut p = Plugin::load(&rt, &test_plugin("hostile_wasip2_fs"))
        .expect("WASI-p2 components are accepted");
    let err = format!(
        "{:#}",
        p.weigh(&synthetic_batch(1, 4, 1, &[], 1, false), true)
            .unwrap_err()
    );
    assert!(
        err.contains("cannot read /etc/passwd") && err.contains("plugin `hostile`"),
        "{err}"
    );
    good_plugin_still_runs(&rt);
}

#[test]
fn compiled_plugins_are_cached_and_reloaded() {
    let dir = common::tempdir();
    let make = || {
        Arc::new(
            PluginRuntime::with_options(
                PluginLimits::default(),
                Arc::new(|x: &[f64]| x.to_vec()),
                Some(dir.path().to_path_buf()),
            )
            .unwrap(),
        )
    };
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plugins/rho1.wasm");
    let first = Plugin::load(&make(), &path).unwrap();
    let cached: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    assert!(cached[0].extension().is_some_and(|e| e == "cwasm"));
    let mut second = Plugin::load(&make(), &path).unwrap();
    assert_eq!(first.manifest().name, second.manifest().name);
    second
        .weigh(
            &synthetic_batch(2, 6, 2, &[wmtp_plugin_host::InputKind::Reference], 3, false),
            true,
        )
        .unwrap();
}
