//! The conformance kit: checks a plugin must pass before a run trusts it — manifest validity, answers of
//! the right length, finite, zero where masks are zero, on generated batches of many shapes (B = 1, T = 1,
//! H = 1..4, all-masked rows); determinism; state save → load → same answer; configure rejecting garbage;
//! and a time budget on a 64k-token × 4-head batch. Used by `wmtp plugin check` and by
//! [`assert_conformant`] in any plugin crate's tests.

use super::bindings::{Batch, InputKind};
use super::{Plugin, PluginLimits, PluginRuntime};
use anyhow::{bail, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One check's outcome.
#[derive(Debug, Clone)]
pub struct CheckOutcome {
    /// What was checked.
    pub name: String,
    /// Error text, None when it passed.
    pub failure: Option<String>,
}

/// All outcomes of a conformance run.
#[derive(Debug, Clone, Default)]
pub struct ConformanceReport {
    /// The plugin's label.
    pub plugin: String,
    /// Outcomes in order.
    pub checks: Vec<CheckOutcome>,
    /// Median time of one `weigh` on the 64k × 4 batch.
    pub big_batch_time: Option<Duration>,
}

impl ConformanceReport {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.failure.is_none())
    }
}

impl std::fmt::Display for ConformanceReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "conformance of {}", self.plugin)?;
        for c in &self.checks {
            match &c.failure {
                None => writeln!(f, "  ok    {}", c.name)?,
                Some(e) => writeln!(f, "  FAIL  {}: {e}", c.name)?,
            }
        }
        let failed = self.checks.iter().filter(|c| c.failure.is_some()).count();
        write!(f, "{} checks, {} failed", self.checks.len(), failed)
    }
}

/// The shapes (B, T, H) every plugin is run on.
pub const SHAPES: [(u32, u32, u32); 9] = [
    (1, 1, 1),
    (1, 1, 4),
    (1, 6, 2),
    (2, 5, 1),
    (3, 7, 2),
    (4, 16, 4),
    (2, 9, 3),
    (8, 32, 2),
    (5, 12, 4),
];

/// A synthetic batch: each sequence has a prompt prefix, a response, then padding; some rows fully
/// masked (`masked_rows`); CE in [0.2, 8]; values in (0, 1); reference CE; rewards alternating 1/0 with
/// consecutive sequences paired. Only the inputs in `needs` are filled.
pub fn synthetic_batch(
    b: u32,
    t: u32,
    h: u32,
    needs: &[InputKind],
    seed: u64,
    masked_rows: bool,
) -> Batch {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (bu, tu, hu) = (b as usize, t as usize, h as usize);
    let mut target = vec![0u8; bu * tu];
    for s in 0..bu {
        if masked_rows && s % 3 == 2 {
            continue;
        }
        let start = rng.random_range(0..=tu / 2);
        let end = rng.random_range(start..=tu);
        let end = if end == start {
            (start + 1).min(tu)
        } else {
            end
        };
        for p in start..end {
            target[s * tu + p] = 1;
        }
    }
    let mut ce = vec![0f32; bu * tu * hu];
    let mut ce_mask = vec![0u8; bu * tu * hu];
    for s in 0..bu {
        for p in 0..tu {
            for k in 0..hu {
                let tgt = p + k + 1;
                if tgt < tu && target[s * tu + tgt] == 1 {
                    let i = (s * tu + p) * hu + k;
                    ce_mask[i] = 1;
                    ce[i] = rng.random_range(0.2..8.0);
                }
            }
        }
    }
    let per_token = |rng: &mut ChaCha8Rng, lo: f32, hi: f32| {
        (0..bu * tu)
            .map(|_| rng.random_range(lo..hi))
            .collect::<Vec<f32>>()
    };
    let values = needs
        .contains(&InputKind::Values)
        .then(|| per_token(&mut rng, 0.05, 0.95));
    let ref_ce = needs
        .contains(&InputKind::Reference)
        .then(|| per_token(&mut rng, 0.2, 8.0));
    let rewards = needs
        .contains(&InputKind::Rewards)
        .then(|| (0..bu).map(|s| ((s + 1) % 2) as f32).collect());
    let pair_ids = needs.contains(&InputKind::Pairs).then(|| {
        (0..bu)
            .map(|s| {
                if s + 1 == bu && bu % 2 == 1 {
                    -1
                } else {
                    (s / 2) as i32
                }
            })
            .collect()
    });
    Batch {
        sequences: b,
        positions: t,
        heads: h,
        step: 0,
        ce,
        ce_mask,
        target_mask: target,
        values,
        ref_ce,
        rewards,
        pair_ids,
    }
}

fn same_answer(a: &super::Coefficients, b: &super::Coefficients) -> bool {
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    bits(&a.ce) == bits(&b.ce)
        && a.values.as_deref().map(bits) == b.values.as_deref().map(bits)
        && a.loss.to_bits() == b.loss.to_bits()
}

/// Runs every check on the plugin at `path` configured with `config` (TOML), within `budget` per big call.
pub fn check_plugin(path: &Path, config: &str, budget: Duration) -> Result<ConformanceReport> {
    let runtime = Arc::new(PluginRuntime::new(PluginLimits::default())?);
    let mut report = ConformanceReport {
        plugin: path.display().to_string(),
        ..Default::default()
    };
    let mut push = |name: &str, r: Result<()>| {
        report.checks.push(CheckOutcome {
            name: name.into(),
            failure: r.err().map(|e| format!("{e:#}")),
        })
    };
    let mut plugin = match Plugin::load(&runtime, path) {
        Ok(p) => p,
        Err(e) => {
            push("loads, with a valid manifest", Err(e));
            return Ok(report);
        }
    };
    push("loads, with a valid manifest", Ok(()));
    let label = plugin.label().to_string();
    let needs = plugin.manifest().needs.clone();

    push(
        "rejects invalid TOML",
        expect_err(plugin.configure("this is = = not toml")),
    );
    push(
        "rejects an unknown config key",
        expect_err(plugin.configure("wmtp_conformance_unknown_key = 1")),
    );
    push("accepts its defaults (empty config)", plugin.configure(""));
    let configured = plugin.configure(config);
    let ok = configured.is_ok();
    push("accepts the given config", configured);
    if !ok {
        report.plugin = label;
        return Ok(report);
    }

    let mut shapes_result = Ok(());
    'outer: for (i, &(b, t, h)) in SHAPES.iter().enumerate() {
        for masked in [false, true] {
            let batch = synthetic_batch(b, t, h, &needs, 100 + i as u64, masked);
            for train in [false, true] {
                if let Err(e) = plugin.weigh(&batch, train) {
                    shapes_result = Err(e.context(format!(
                        "shape B={b} T={t} H={h}, masked rows {masked}, train {train}"
                    )));
                    break 'outer;
                }
            }
        }
    }
    push(
        "valid answers on every shape (lengths, finite, zero off-mask)",
        shapes_result,
    );

    let batch = synthetic_batch(4, 24, 3, &needs, 7, true);
    push(
        "deterministic (same batch twice → same bits)",
        (|| {
            for train in [false, true] {
                let a = plugin.weigh(&batch, train)?;
                let b = plugin.weigh(&batch, train)?;
                if !same_answer(&a, &b) {
                    bail!("two calls with the same batch (train = {train}) gave different answers");
                }
            }
            Ok(())
        })(),
    );

    push(
        "state save → load → same answer",
        (|| {
            let saved = plugin.save_state()?;
            let before = plugin.weigh(&batch, true)?;
            for step in 0..3 {
                let other = synthetic_batch(4, 24, 3, &needs, 50 + step, false);
                plugin.weigh(&other, true)?;
                plugin.after_step(step)?;
            }
            plugin.load_state(&saved)?;
            let after = plugin.weigh(&batch, true)?;
            if !same_answer(&before, &after) {
                bail!(
                    "after load-state the answer differs from the one given right after save-state"
                );
            }
            if plugin
                .load_state(b"\xffnot a state of this plugin\x00")
                .is_ok()
                && !saved.is_empty()
            {
                bail!("load-state accepted garbage bytes");
            }
            plugin.load_state(&saved)?;
            Ok(())
        })(),
    );

    let big = synthetic_batch(16, 4096, 4, &needs, 9, false);
    let mut times = Vec::new();
    let timed = (|| {
        for _ in 0..5 {
            let s = Instant::now();
            plugin.weigh(&big, true)?;
            times.push(s.elapsed());
        }
        times.sort();
        let median = times[times.len() / 2];
        if median > budget {
            bail!("median weigh of a 64k-token × 4-head batch took {median:?}, budget {budget:?}");
        }
        Ok(())
    })();
    push(
        &format!("time budget ({budget:?} for 64k tokens × 4 heads)"),
        timed,
    );
    report.big_batch_time = times.get(times.len() / 2).copied();
    report.plugin = label;
    Ok(report)
}

fn expect_err(r: Result<()>) -> Result<()> {
    match r {
        Ok(()) => bail!("was accepted"),
        Err(_) => Ok(()),
    }
}

/// Test helper for plugin crates: panics with the full report unless the plugin passes every check.
pub fn assert_conformant(path: &Path, config: &str) {
    let report =
        check_plugin(path, config, Duration::from_millis(250)).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(report.passed(), "{report}");
}
