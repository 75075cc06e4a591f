//! Hostile plugins (tests/hostile/): each misbehaviour ends in an error that names the plugin, and the
//! same host then loads and runs a good plugin.

use crate::common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wmtp_plugin_host::conformance::synthetic_batch;
use wmtp_plugin_host::{Plugin, PluginLimits, PluginRuntime};

fn test_plugin(name: &str) -> PathBuf {
    common::fixture(&format!("test-plugins/{name}.wasm"))
}

pub(crate) fn runtime() -> Arc<PluginRuntime> {
    runtime_with(Duration::from_millis(300))
}

/// A runtime with a 256 MiB memory cap and the given wall-clock cap per call.
fn runtime_with(call_timeout: Duration) -> Arc<PluginRuntime> {
    let limits = PluginLimits {
        call_timeout,
        memory_bytes: 256 << 20,
        ..Default::default()
    };
    Arc::new(
        PluginRuntime::with_options(limits, Arc::new(|x: &[f64]| Ok(x.to_vec())), None).unwrap(),
    )
}

/// After any failure the same runtime still loads and runs a good plugin.
pub(crate) fn good_plugin_still_runs(rt: &Arc<PluginRuntime>) {
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
            && err.contains("@0.2.0")
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
        PluginRuntime::with_options(limits, Arc::new(|x: &[f64]| Ok(x.to_vec())), None).unwrap(),
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
                Arc::new(|x: &[f64]| Ok(x.to_vec())),
                Some(dir.path().to_path_buf()),
            )
            .unwrap(),
        )
    };
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plugins/rho1.wasm");
    let first = Plugin::load(&make(), &path).unwrap();
    // one artifact and its digest
    let cached = artifact_in(dir.path());
    assert!(cached.with_extension("cwasm.sha256").exists());
    let mut second = Plugin::load(&make(), &path).unwrap();
    assert_eq!(first.manifest().name, second.manifest().name);
    second
        .weigh(
            &synthetic_batch(2, 6, 2, &[wmtp_plugin_host::InputKind::Reference], 3, false),
            true,
        )
        .unwrap();
}

/// Writes the WAT component `tests/hostile/wat/<name>.wat` as a binary plugin file in `dir`.
fn wat_plugin(dir: &std::path::Path, name: &str) -> PathBuf {
    let src =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../tests/hostile/wat/{name}.wat"));
    let bytes = wat::parse_file(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    let out = dir.join(format!("{name}.wasm"));
    std::fs::write(&out, bytes).unwrap();
    out
}

/// Loads a plugin that must fail while loading; returns the error text after checking it names the file.
pub(crate) fn load_error(rt: &Arc<PluginRuntime>, path: &std::path::Path) -> String {
    let err = format!(
        "{:#}",
        Plugin::load(rt, path).expect_err("a hostile plugin must not load")
    );
    let file = path.file_name().unwrap().to_str().unwrap();
    assert!(err.contains(file), "error must name the plugin file: {err}");
    err
}

/// Loads the WAT component `name` (which must fail to load) in a fresh runtime; returns the runtime and
/// the error text.
fn wat_load_error(name: &str) -> (Arc<PluginRuntime>, String) {
    let rt = runtime();
    let dir = common::tempdir();
    let err = load_error(&rt, &wat_plugin(dir.path(), name));
    (rt, err)
}

#[test]
fn a_start_function_that_spins_hits_the_wall_clock_cap_at_instantiation() {
    let t = Instant::now();
    let (rt, err) = wat_load_error("start_spin");
    assert!(
        err.contains("instantiation failed") && err.contains("wall-clock limit"),
        "{err}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    good_plugin_still_runs(&rt);
}

#[test]
fn several_memories_share_one_memory_budget() {
    let (rt, err) = wat_load_error("many_memories");
    assert!(err.contains("memory limit of 256 MiB"), "{err}");
    good_plugin_still_runs(&rt);
}

#[test]
fn table_elements_count_against_the_memory_budget() {
    let (rt, err) = wat_load_error("table_grow");
    assert!(err.contains("memory limit of 256 MiB"), "{err}");
    good_plugin_still_runs(&rt);
}

#[test]
fn a_wasip2_component_blocked_in_poll_is_stopped_at_the_deadline() {
    // std::thread::sleep(1 h) in a wasm32-wasip2 component = a monotonic-clock subscription waited on
    // in wasi:io/poll, i.e. in host code
    let rt = runtime();
    let t = Instant::now();
    let err = weigh_error(&rt, "hostile_wasip2_sleep");
    assert!(
        err.contains("wall-clock limit") && err.contains("wasi:io/poll"),
        "{err}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "two capped calls took {:?}",
        t.elapsed()
    );
    good_plugin_still_runs(&rt);
}

#[test]
fn a_sleep_inside_the_cap_still_sleeps() {
    // the deadline-aware poll keeps WASI's meaning: a 50 ms sleep (evaluation mode) waits 50 ms and the
    // call succeeds
    let rt = runtime();
    let mut p = Plugin::load(&rt, &test_plugin("hostile_wasip2_sleep")).unwrap();
    let t = Instant::now();
    p.weigh(&synthetic_batch(1, 4, 1, &[], 1, false), false)
        .expect("a short sleep is fine");
    assert!(
        t.elapsed() >= Duration::from_millis(50),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn a_blocking_stdin_read_ends_at_once() {
    // stream reads are the other way a WASI-p2 component can wait in host code: stdin is empty
    let rt = runtime();
    let mut p = Plugin::load(&rt, &test_plugin("hostile_wasip2_stdin")).unwrap();
    let t = Instant::now();
    p.weigh(&synthetic_batch(1, 4, 1, &[], 1, false), true)
        .expect("reading an empty stdin is fine");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
}

#[test]
fn metric_names_with_escape_sequences_are_refused() {
    let rt = runtime();
    let err = weigh_error(&rt, "hostile_metric_escape");
    assert!(
        err.contains("metric name") && err.contains("[A-Za-z0-9_.]"),
        "{err}"
    );
    assert!(!err.contains('\x1b') && !err.contains('\x07'), "{err:?}");
    good_plugin_still_runs(&rt);
}

#[test]
fn a_million_metrics_are_refused_quickly() {
    let rt = runtime_with(Duration::from_secs(20));
    let t = Instant::now();
    let err = weigh_error(&rt, "hostile_many_metrics");
    assert!(
        err.contains("returned 1000000 metrics (at most 256 per call)"),
        "{err}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "took {:?}",
        t.elapsed()
    );
    good_plugin_still_runs(&rt);
}

#[test]
fn a_huge_error_string_is_cleaned_and_capped() {
    let rt = runtime_with(Duration::from_secs(20));
    let err = weigh_error(&rt, "hostile_huge_error");
    assert!(err.len() < 8 << 10, "{} bytes of error", err.len());
    assert!(
        err.contains("more bytes cut") && err.contains("evil"),
        "{}",
        &err[..200]
    );
    assert!(
        !err.contains('\x1b') && !err.contains('\x07') && !err.contains('\u{202E}'),
        "{:?}",
        &err[..200]
    );
    good_plugin_still_runs(&rt);
}

#[test]
fn an_oversized_all_reduce_names_its_cause() {
    let rt = runtime_with(Duration::from_secs(20));
    let err = weigh_error(&rt, "hostile_big_all_reduce");
    assert!(
        err.contains("all-reduce-sum of 4000000 values refused") && err.contains("1048576"),
        "{err}"
    );
    good_plugin_still_runs(&rt);
}

#[test]
fn coefficients_above_the_bound_are_refused() {
    let rt = runtime();
    for name in ["hostile_huge_coef", "hostile_max_coef"] {
        let err = weigh_error(&rt, name);
        assert!(err.contains("above the bound |c| ≤ 1e6"), "{name}: {err}");
    }
    good_plugin_still_runs(&rt);
}

#[test]
fn a_version_with_escape_sequences_is_not_semver() {
    let rt = runtime();
    let err = load_error(&rt, &test_plugin("hostile_bad_version"));
    assert!(err.contains("is not semver"), "{err}");
    assert!(!err.contains('\x1b'), "{err:?}");
    good_plugin_still_runs(&rt);
}

#[test]
fn a_manifest_listing_ten_million_groups_is_refused() {
    // the guest's memory cap (256 MiB here) bounds what is lifted; the check refuses it before anything
    // is printed or kept (10 s per call: lifting 10 M entries takes ~1 s while other tests run)
    let rt = runtime_with(Duration::from_secs(10));
    let t = Instant::now();
    let err = load_error(&rt, &test_plugin("hostile_many_trains"));
    assert!(
        err.contains("`trains` lists 10000000 entries of which 1 differ"),
        "{err}"
    );
    assert!(err.len() < 1024, "{} bytes of error", err.len());
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    good_plugin_still_runs(&rt);
}

#[test]
fn a_default_value_that_draws_on_the_terminal_is_refused() {
    let rt = runtime();
    let err = load_error(&rt, &test_plugin("hostile_bad_default"));
    assert!(err.contains("default of config key `motto`"), "{err}");
    // the quoted default is neutralised: no C1 CSI, no bidi override, no forged line
    assert!(
        !err.contains('\u{9b}') && !err.contains('\u{202e}'),
        "{err:?}"
    );
    assert!(!err.contains('\n'), "{err:?}");
    good_plugin_still_runs(&rt);
}

/// A runtime whose compiled-plugin cache is `dir`.
fn cached_runtime(dir: &std::path::Path) -> Arc<PluginRuntime> {
    Arc::new(
        PluginRuntime::with_options(
            PluginLimits::default(),
            Arc::new(|x: &[f64]| Ok(x.to_vec())),
            Some(dir.to_path_buf()),
        )
        .unwrap(),
    )
}

/// The one compiled artifact (`*.cwasm`) in a cache folder.
fn artifact_in(dir: &std::path::Path) -> PathBuf {
    let found: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    found[0].clone()
}

#[test]
fn a_planted_compiled_artifact_is_not_run() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plugins");
    let (evil, victim) = (common::tempdir(), common::tempdir());
    // the attacker's code: baseline, compiled by the same engine
    Plugin::load(&cached_runtime(evil.path()), &root.join("baseline.wasm")).unwrap();
    // the victim's cache holds rho1; the attacker overwrites rho1's artifact with baseline's
    Plugin::load(&cached_runtime(victim.path()), &root.join("rho1.wasm")).unwrap();
    let planted = artifact_in(victim.path());
    std::fs::copy(artifact_in(evil.path()), &planted).unwrap();
    let p = Plugin::load(&cached_runtime(victim.path()), &root.join("rho1.wasm")).unwrap();
    assert_eq!(p.manifest().name, "rho1", "the planted artifact ran");
    // the entry was recompiled: it is rho1's again and loads from the cache
    let p = Plugin::load(&cached_runtime(victim.path()), &root.join("rho1.wasm")).unwrap();
    assert_eq!(p.manifest().name, "rho1");
}

#[cfg(unix)]
#[test]
fn a_cache_folder_others_can_write_is_not_used() {
    use std::os::unix::fs::PermissionsExt;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plugins");
    let (evil, shared) = (common::tempdir(), common::tempdir());
    Plugin::load(&cached_runtime(evil.path()), &root.join("baseline.wasm")).unwrap();
    Plugin::load(&cached_runtime(shared.path()), &root.join("rho1.wasm")).unwrap();
    // a world-writable cache: anyone could have planted both the artifact and its digest
    let planted = artifact_in(shared.path());
    std::fs::copy(artifact_in(evil.path()), &planted).unwrap();
    let evil_digest =
        std::fs::read(artifact_in(evil.path()).with_extension("cwasm.sha256")).unwrap();
    std::fs::write(planted.with_extension("cwasm.sha256"), evil_digest).unwrap();
    std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let p = Plugin::load(&cached_runtime(shared.path()), &root.join("rho1.wasm")).unwrap();
    assert_eq!(
        p.manifest().name,
        "rho1",
        "an artifact from a shared folder ran"
    );
}
