//! The conformance kit: checks a plugin must pass before a run trusts it — manifest validity, answers of
//! the right length, finite, zero where masks are zero, on generated batches of many shapes (B = 1, T = 1,
//! H = 1..4, all-masked rows); determinism; state save → load → same answer; configure rejecting garbage;
//! and a time budget on a 64k-token × 4-head batch. Used by `wmtp plugin check` and by
//! [`assert_conformant`] in any plugin crate's tests.

use crate::bindings::{Batch, InputKind};
use crate::{Plugin, PluginLimits, PluginRuntime};
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
    /// An advisory check: a failure is reported as a note and does not fail the plugin.
    pub advisory: bool,
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
    /// Whether every check passed (advisory ones aside).
    pub fn passed(&self) -> bool {
        self.checks
            .iter()
            .all(|c| c.failure.is_none() || c.advisory)
    }
}

impl std::fmt::Display for ConformanceReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "conformance of {}", self.plugin)?;
        for c in &self.checks {
            match (&c.failure, c.advisory) {
                (None, _) => writeln!(f, "  ok    {}", c.name)?,
                (Some(e), false) => writeln!(f, "  FAIL  {}: {e}", c.name)?,
                (Some(e), true) => writeln!(f, "  note  {}: {e}", c.name)?,
            }
        }
        let failed = self
            .checks
            .iter()
            .filter(|c| c.failure.is_some() && !c.advisory)
            .count();
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

/// The vocabulary the kit gives plugins (`vocabulary` import) and draws `batch.tokens` from: 64 pieces
/// in byte-level BPE's spelling — words with and without a leading space (`Ġ`), newlines (`Ċ`),
/// indentation, punctuation, digits and a special token — so that a plugin classifying pieces meets
/// each kind.
pub const KIT_VOCABULARY: [&str; 64] = [
    "<|endoftext|>",
    "Ċ",
    "ĊĊ",
    "Ġ",
    "ĠĠ",
    "ĠĠĠ",
    "ĠĠĠĠ",
    "ĉ",
    "def",
    "Ġdef",
    "return",
    "Ġreturn",
    "if",
    "Ġif",
    "else",
    "Ġfor",
    "Ġin",
    "Ġwhile",
    "Ġimport",
    "class",
    "(",
    ")",
    ":",
    ",",
    ".",
    "[",
    "]",
    "=",
    "Ġ=",
    "+",
    "Ġ+",
    "-",
    "*",
    "/",
    "0",
    "1",
    "2",
    "10",
    "#",
    "Ġ#",
    "\"\"\"",
    "'",
    "\"",
    "x",
    "Ġx",
    "self",
    "Ġself",
    "Ġthe",
    "Ġa",
    "Ġof",
    "Ġto",
    "Ġis",
    "Ġlist",
    "Ġnumber",
    "Ġreturns",
    "Ġvalue",
    "_",
    "__",
    "init",
    "Ġprint",
    "True",
    "ĠNone",
    "Ġ#:",
    "é",
];

/// A synthetic batch: each sequence has a prompt prefix, a response, then padding; some rows fully
/// masked (`masked_rows`); CE in [0.2, 8]; values in (0, 1); reference CE; rewards alternating 1/0 with
/// consecutive sequences paired; token ids drawn from [`KIT_VOCABULARY`]'s. Only the inputs in `needs`
/// are filled.
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
    let target = response_spans(&mut rng, bu, tu, masked_rows);
    let ce_mask = crate::ce_mask(&target, bu, tu, hu);
    let ce: Vec<f32> = ce_mask
        .iter()
        .map(|&m| {
            if m != 0 {
                rng.random_range(0.2..8.0)
            } else {
                0.0
            }
        })
        .collect();
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
    let tokens = needs.contains(&InputKind::Tokens).then(|| {
        (0..bu * tu)
            .map(|_| rng.random_range(0..KIT_VOCABULARY.len() as u32))
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
        tokens,
    }
}

/// The target mask [b × t] of [`synthetic_batch`]: one response span per sequence (start in the first
/// half, at least one position), none in every third sequence when `masked_rows`.
fn response_spans(rng: &mut ChaCha8Rng, bu: usize, tu: usize, masked_rows: bool) -> Vec<u8> {
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
    target
}

/// [`KIT_VOCABULARY`] as the pieces a plugin's `vocabulary` import returns.
pub fn kit_vocabulary() -> Arc<Vec<String>> {
    Arc::new(KIT_VOCABULARY.iter().map(|p| p.to_string()).collect())
}

fn same_answer(a: &crate::Coefficients, b: &crate::Coefficients) -> bool {
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
    let mut outcomes: Vec<(String, Result<()>, bool)> = Vec::new();
    let mut plugin = match Plugin::load(&runtime, path) {
        Ok(p) => p,
        Err(e) => {
            outcomes.push(("loads, with a valid manifest".into(), Err(e), false));
            return Ok(finish(report, outcomes));
        }
    };
    outcomes.push(("loads, with a valid manifest".into(), Ok(()), false));
    plugin.set_vocabulary(kit_vocabulary());
    let label = plugin.label().to_string();
    let needs = plugin.manifest().needs.clone();
    let configured = configuration_checks(&mut plugin, config, &mut outcomes);
    if !configured {
        report.plugin = label;
        return Ok(finish(report, outcomes));
    }
    let mut push = |name: &str, r: Result<()>| outcomes.push((name.into(), r, false));
    push(
        "valid answers on every shape (lengths, finite, zero off-mask)",
        every_shape(&mut plugin, &needs),
    );
    let batch = synthetic_batch(4, 24, 3, &needs, 7, true);
    push(
        "deterministic (same batch twice → same bits)",
        deterministic(&mut plugin, &batch),
    );
    push(
        "state save → load → same answer",
        state_round_trip(&mut plugin, &batch, &needs),
    );
    derivative_checks(&mut plugin, &needs, &mut outcomes);
    let (timed, median) = time_budget(&mut plugin, &needs, budget);
    outcomes.push((
        format!("time budget ({budget:?} for 64k tokens × 4 heads)"),
        timed,
        false,
    ));
    report.big_batch_time = median;
    report.plugin = label;
    Ok(finish(report, outcomes))
}

/// Garbage TOML and an unknown key refused, the defaults and `config` accepted; whether `config` was.
fn configuration_checks(
    plugin: &mut Plugin,
    config: &str,
    outcomes: &mut Vec<(String, Result<()>, bool)>,
) -> bool {
    let mut push = |name: &str, r: Result<()>| outcomes.push((name.into(), r, false));
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
    ok
}

/// Valid answers (checked by `Plugin::weigh`) on every shape of [`SHAPES`], with and without fully
/// masked rows, in validation and training.
fn every_shape(plugin: &mut Plugin, needs: &[InputKind]) -> Result<()> {
    for (i, &(b, t, h)) in SHAPES.iter().enumerate() {
        for masked in [false, true] {
            let batch = synthetic_batch(b, t, h, needs, 100 + i as u64, masked);
            for train in [false, true] {
                plugin.weigh(&batch, train).map_err(|e| {
                    e.context(format!(
                        "shape B={b} T={t} H={h}, masked rows {masked}, train {train}"
                    ))
                })?;
            }
        }
    }
    Ok(())
}

/// The same batch twice gives the same bits, in validation and in training.
fn deterministic(plugin: &mut Plugin, batch: &Batch) -> Result<()> {
    for train in [false, true] {
        let a = plugin.weigh(batch, train)?;
        let b = plugin.weigh(batch, train)?;
        if !same_answer(&a, &b) {
            bail!("two calls with the same batch (train = {train}) gave different answers");
        }
    }
    Ok(())
}

/// Saved state, three steps of other batches, the state loaded: the first answer again; garbage state
/// refused.
fn state_round_trip(plugin: &mut Plugin, batch: &Batch, needs: &[InputKind]) -> Result<()> {
    let saved = plugin.save_state()?;
    let before = plugin.weigh(batch, true)?;
    for step in 0..3 {
        let other = synthetic_batch(4, 24, 3, needs, 50 + step, false);
        plugin.weigh(&other, true)?;
        plugin.after_step(step)?;
    }
    plugin.load_state(&saved)?;
    let after = plugin.weigh(batch, true)?;
    if !same_answer(&before, &after) {
        bail!("after load-state the answer differs from the one given right after save-state");
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
}

/// ∂L/∂CE against central differences (when the plugin trains CE), and ∂L/∂V as an advisory check.
fn derivative_checks(
    plugin: &mut Plugin,
    needs: &[InputKind],
    outcomes: &mut Vec<(String, Result<()>, bool)>,
) {
    let manifest = plugin.manifest().clone();
    if manifest.uses_ce {
        outcomes.push((
            "∂L/∂CE are the derivatives of the reported loss (central differences)".into(),
            derivatives_match(plugin, needs, false),
            false,
        ));
    }
    if manifest.uses_values_grad {
        let r = derivatives_match(plugin, needs, true).map_err(|e| {
            e.context("expected for semi-gradients (targets or weights computed from V without a gradient)")
        });
        outcomes.push((
            "∂L/∂V are the derivatives of the reported loss (central differences)".into(),
            r,
            true,
        ));
    }
}

/// Five weighs of a 64k-token × 4-head batch: whether the median is within `budget`, and the median.
fn time_budget(
    plugin: &mut Plugin,
    needs: &[InputKind],
    budget: Duration,
) -> (Result<()>, Option<Duration>) {
    let big = synthetic_batch(16, 4096, 4, needs, 9, false);
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
    (timed, times.get(times.len() / 2).copied())
}

fn finish(
    mut report: ConformanceReport,
    outcomes: Vec<(String, Result<()>, bool)>,
) -> ConformanceReport {
    report.checks = outcomes
        .into_iter()
        .map(|(name, r, advisory)| CheckOutcome {
            name,
            failure: r.err().map(|e| format!("{e:#}")),
            advisory,
        })
        .collect();
    report
}

/// Central differences of the reported loss, (L(x+ε) − L(x−ε)) / 2ε with ε = 10⁻³, against the returned
/// coefficient, for up to 12 valid entries of CE (or of V when `values`), on a fixed synthetic batch;
/// within 10⁻³ relative (10⁻⁶ absolute for coefficients below 10⁻³).
pub fn derivatives_match(plugin: &mut Plugin, needs: &[InputKind], values: bool) -> Result<()> {
    let batch = synthetic_batch(4, 10, 3, needs, 77, false);
    let c = plugin.weigh(&batch, true)?;
    let (coefs, mask): (Vec<f32>, &[u8]) = if values {
        let Some(v) = c.values.clone() else {
            bail!("the manifest says it returns ∂L/∂V, but the answer has none");
        };
        (v, &batch.target_mask)
    } else {
        (c.ce.clone(), &batch.ce_mask)
    };
    let picks = (0..coefs.len())
        .filter(|&i| mask[i] != 0)
        .step_by(3)
        .take(12);
    let eps = 1e-3f32;
    for i in picks {
        // the loss at x ± ε, and the step actually taken (x ± ε rounded to f32)
        let mut loss_at = |d: f32| -> Result<(f64, f32)> {
            let mut b = batch.clone();
            let x = match (values, b.values.as_mut()) {
                (true, Some(v)) => &mut v[i],
                (true, None) => bail!("∂L/∂V without values in the batch"),
                (false, _) => &mut b.ce[i],
            };
            *x += d;
            let at = *x;
            Ok((plugin.weigh(&b, true)?.loss, at))
        };
        let ((hi, x_hi), (lo, x_lo)) = (loss_at(eps)?, loss_at(-eps)?);
        let fd = (hi - lo) / (x_hi as f64 - x_lo as f64);
        let g = coefs[i] as f64;
        if (fd - g).abs() > 1e-3 * g.abs().max(1e-3) {
            let what = if values { "V" } else { "CE" };
            bail!(
                "{what} entry {i}: the loss changes at rate {fd:.6}, the coefficient says {g:.6}"
            );
        }
    }
    Ok(())
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
