//! Checks of a plugin's answers before the host uses them: lengths, finiteness, a bound on every
//! coefficient, zero coefficients where the masks are zero, value coefficients only from plugins that
//! declare them, metric names the host can file safely; and manifest sanity (strict semver, names as
//! identifiers, texts cleaned and capped).

use crate::bindings::{group_name, input_name};
use crate::bindings::{Batch, Coefficients, Manifest};
use crate::text::{clean, is_identifier, snippet};
use anyhow::{bail, Result};
use std::collections::HashSet;

/// The largest coefficient magnitude a plugin may return (CE and value coefficients alike). A weighted
/// mean has |c| ≤ max|w|, so real pipelines stay far below; anything above is a bug or an attack, and
/// would push the gradient norm towards infinity.
pub const MAX_COEFFICIENT: f32 = 1e6;
/// Most metrics one `weigh` call may return.
pub const MAX_METRICS: usize = 256;
/// Longest metric name, in bytes.
pub const MAX_METRIC_NAME: usize = 64;
/// Most config keys a manifest may declare.
pub const MAX_CONFIG_KEYS: usize = 256;
/// The cap on one config key's default value (a one-line TOML value), in bytes.
pub const MAX_DEFAULT_BYTES: usize = 1024;

/// Whether `name` may name a metric: 1–64 of `[A-Za-z0-9_.]`.
pub fn valid_metric_name(name: &str) -> bool {
    name.len() <= MAX_METRIC_NAME && is_identifier(name, b"_.")
}

/// Checks the metrics of one answer: at most [`MAX_METRICS`], valid unique names, finite values.
pub fn check_metrics(metrics: &[(String, f64)]) -> Result<()> {
    if metrics.len() > MAX_METRICS {
        bail!(
            "returned {} metrics (at most {MAX_METRICS} per call)",
            metrics.len()
        );
    }
    let mut seen = HashSet::with_capacity(metrics.len());
    for (k, v) in metrics {
        if !valid_metric_name(k) {
            bail!(
                "metric name `{}` is not 1–{MAX_METRIC_NAME} characters of [A-Za-z0-9_.]",
                snippet(k)
            );
        }
        if !seen.insert(k.as_str()) {
            bail!("metric `{k}` is returned twice");
        }
        if !v.is_finite() {
            bail!("metric `{k}` is {v} (must be finite)");
        }
    }
    Ok(())
}

/// Validates `c` against the batch it answers.
pub fn check_coefficients(c: &Coefficients, b: &Batch, m: &Manifest) -> Result<()> {
    let (nb, nt, nh) = (b.sequences as usize, b.positions as usize, b.heads as usize);
    if c.ce.is_empty() && !m.uses_ce {
        // value-only pipelines may leave the CE coefficients out (all zero)
    } else if c.ce.len() != nb * nt * nh {
        bail!(
            "returned {} CE coefficients for a [B={nb}, T={nt}, H={nh}] batch (expected {})",
            c.ce.len(),
            nb * nt * nh
        );
    }
    // one fused pass; the details are worked out only on failure
    let uses_ce = m.uses_ce;
    let ok = |x: f32, mask: u8| {
        x.is_finite() && x.abs() <= MAX_COEFFICIENT && (x == 0.0 || (mask != 0 && uses_ce))
    };
    if let Some(i) = c.ce.iter().zip(&b.ce_mask).position(|(&x, &mk)| !ok(x, mk)) {
        let (bb, t, k) = (i / (nt * nh), (i / nh) % nt, i % nh);
        let x = c.ce[i];
        if !x.is_finite() {
            bail!("CE coefficient {i} [b={bb}, t={t}, k={k}] is {x} (must be finite)");
        }
        if x.abs() > MAX_COEFFICIENT {
            bail!("CE coefficient {i} [b={bb}, t={t}, k={k}] is {x:e}, above the bound |c| ≤ {MAX_COEFFICIENT:e}");
        }
        if b.ce_mask[i] == 0 {
            bail!(
                "CE coefficient at [b={bb}, t={t}, k={k}] is {x} where the mask is 0 (must be 0)"
            );
        }
        bail!("returned non-zero CE coefficients but its manifest says uses-ce = false");
    }
    if let Some(v) = &c.values {
        if !m.uses_values_grad {
            bail!("returned value coefficients but its manifest says uses-values-grad = false");
        }
        if v.len() != nb * nt {
            bail!(
                "returned {} value coefficients for a [B={nb}, T={nt}] batch (expected {})",
                v.len(),
                nb * nt
            );
        }
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            bail!("value coefficient {i} is {} (must be finite)", v[i]);
        }
        if let Some(i) = v.iter().position(|x| x.abs() > MAX_COEFFICIENT) {
            bail!(
                "value coefficient {i} is {:e}, above the bound |c| ≤ {MAX_COEFFICIENT:e}",
                v[i]
            );
        }
        if let Some(i) = (0..v.len()).find(|&i| b.target_mask[i] == 0 && v[i] != 0.0) {
            bail!(
                "value coefficient at [b={}, t={}] is {} where the target mask is 0 (must be 0)",
                i / nt,
                i % nt,
                v[i]
            );
        }
    }
    if !c.loss.is_finite() {
        bail!("returned loss {} (must be finite)", c.loss);
    }
    check_metrics(&c.metrics)
}

/// Validates a manifest: an identifier name, a strict semver version (semver.org 2.0), unique
/// identifier config keys with TOML defaults, texts within [`crate::text::MAX_TEXT_BYTES`].
pub fn check_manifest(m: &Manifest) -> Result<()> {
    if !is_identifier(&m.name, b"-_") {
        bail!(
            "manifest name `{}` must be 1–64 ASCII letters, digits, '-' or '_'",
            snippet(&m.name)
        );
    }
    if m.version.len() > 64 || semver::Version::parse(&m.version).is_err() {
        bail!(
            "manifest version `{}` is not semver (MAJOR.MINOR.PATCH[-PRE][+BUILD], semver.org 2.0)",
            snippet(&m.version)
        );
    }
    // each kind at most once: the lists are bounded by the contract's enums (4 inputs, 4 groups), so a
    // manifest cannot make the host hold or print millions of entries
    let distinct = |names: Vec<&'static str>| names.into_iter().collect::<HashSet<_>>().len();
    for (what, n, unique) in [
        (
            "needs",
            m.needs.len(),
            distinct(m.needs.iter().map(|k| input_name(*k)).collect()),
        ),
        (
            "trains",
            m.trains.len(),
            distinct(m.trains.iter().map(|g| group_name(*g)).collect()),
        ),
    ] {
        if n != unique {
            bail!("manifest `{what}` lists {n} entries of which {unique} differ: name each at most once");
        }
    }
    if m.config_keys.len() > MAX_CONFIG_KEYS {
        bail!(
            "declares {} config keys (at most {MAX_CONFIG_KEYS})",
            m.config_keys.len()
        );
    }
    let mut seen = HashSet::new();
    for k in &m.config_keys {
        if !is_identifier(&k.name, b"_.-") {
            bail!(
                "config key `{}` must be 1–64 ASCII letters, digits, '_', '.' or '-'",
                snippet(&k.name)
            );
        }
        if !seen.insert(&k.name) {
            bail!("config key `{}` is declared twice", k.name);
        }
        if k.default_value.len() > MAX_DEFAULT_BYTES
            || crate::text::clean_line(&k.default_value) != k.default_value
            || toml::from_str::<toml::Table>(&format!("v = {}", k.default_value)).is_err()
        {
            bail!(
                "default of config key `{}` is not a one-line TOML value of at most {MAX_DEFAULT_BYTES} bytes without control characters: {}",
                k.name,
                snippet(&k.default_value)
            );
        }
    }
    Ok(())
}

/// The manifest with its free texts (description, config-key docs) cleaned of control characters and
/// capped, ready to show. Run after [`check_manifest`].
pub fn cleaned_manifest(mut m: Manifest) -> Manifest {
    m.description = clean(&m.description);
    for k in &mut m.config_keys {
        k.doc = clean(&k.doc);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_are_identifiers() {
        assert!(valid_metric_name("ema.mean_ce"));
        for bad in ["", "loss\u{1b}[2J", "a b", "x/y", &"m".repeat(65)] {
            assert!(!valid_metric_name(bad), "{bad}");
        }
        let many: Vec<_> = (0..257).map(|i| (format!("m{i}"), 1.0)).collect();
        assert!(check_metrics(&many).is_err());
        assert!(check_metrics(&many[..256]).is_ok());
        assert!(check_metrics(&[("a".into(), 1.0), ("a".into(), 2.0)]).is_err());
    }
}
