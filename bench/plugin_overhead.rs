//! Plugin overhead: each shipped pipeline on a 64k-token × 4-head batch, run as a sandboxed Wasm
//! component through the host (copy in, call, copy out, validation) vs the SAME Rust code called natively
//! (the plugin crates are also rlibs). Prints medians and the ratio.
//!
//! Run: `scripts/build-plugins.sh && cargo bench --bench plugin_overhead`

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use wmtp_plugin_host::conformance::synthetic_batch;
use wmtp_plugin_host::{Batch, InputKind, Plugin, PluginLimits, PluginRuntime};
use wmtp_sdk::Pipeline;

fn median_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(|a, b| a.total_cmp(b));
    t[reps / 2]
}

fn to_sdk(b: &Batch) -> wmtp_sdk::Batch {
    wmtp_sdk::Batch {
        sequences: b.sequences,
        positions: b.positions,
        heads: b.heads,
        step: b.step,
        ce: b.ce.clone(),
        ce_mask: b.ce_mask.clone(),
        target_mask: b.target_mask.clone(),
        values: b.values.clone(),
        ref_ce: b.ref_ce.clone(),
        rewards: b.rewards.clone(),
        pair_ids: b.pair_ids.clone(),
        tokens: b.tokens.clone(),
    }
}

fn native<P: Pipeline>(batch: &wmtp_sdk::Batch) -> impl FnMut() + '_ {
    let mut p = P::default();
    p.configure(Default::default()).unwrap();
    move || {
        std::hint::black_box(p.weigh(batch, true).unwrap());
    }
}

fn main() {
    let all = [
        InputKind::Values,
        InputKind::Reference,
        InputKind::Rewards,
        InputKind::Pairs,
    ];
    let batch = synthetic_batch(16, 4096, 4, &all, 1, false);
    let sdk_batch = to_sdk(&batch);
    let rt = Arc::new(PluginRuntime::new(PluginLimits::default()).unwrap());
    let reps = 31;
    println!(
        "64k tokens × 4 heads ({} valid CE entries), median of {reps} calls",
        batch.ce_mask.iter().filter(|&&m| m != 0).count()
    );
    println!(
        "{:<12}{:>12}{:>12}{:>8}",
        "plugin", "native ms", "wasm ms", "ratio"
    );
    for name in ["baseline", "critic", "rho1", "verifiable"] {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../plugins")
            .join(format!("{name}.wasm"));
        let mut plugin = Plugin::load(&rt, &path)
            .unwrap_or_else(|e| panic!("{e:#} (run scripts/build-plugins.sh)"));
        plugin.configure("").unwrap();
        let t_native = match name {
            "baseline" => median_ms(reps, native::<wmtp_plugin_baseline::Baseline>(&sdk_batch)),
            "critic" => median_ms(reps, native::<wmtp_plugin_critic::Critic>(&sdk_batch)),
            "rho1" => median_ms(reps, native::<wmtp_plugin_rho1::Rho1>(&sdk_batch)),
            _ => median_ms(
                reps,
                native::<wmtp_plugin_verifiable::Verifiable>(&sdk_batch),
            ),
        };
        let t_wasm = median_ms(reps, || {
            std::hint::black_box(plugin.weigh(&batch, true).unwrap());
        });
        println!(
            "{name:<12}{t_native:>12.2}{t_wasm:>12.2}{:>7.2}×",
            t_wasm / t_native
        );
    }
}
