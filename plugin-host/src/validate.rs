//! Checks of a plugin's answers before the host uses them: lengths, finiteness, zero coefficients where
//! the masks are zero, value coefficients only from plugins that declare them; and manifest sanity.

use crate::bindings::{Batch, Coefficients, Manifest};
use anyhow::{bail, Result};
use std::collections::HashSet;

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
    let ok = |x: f32, mask: u8| x.is_finite() && (x == 0.0 || (mask != 0 && uses_ce));
    if let Some(i) = c.ce.iter().zip(&b.ce_mask).position(|(&x, &mk)| !ok(x, mk)) {
        let (bb, t, k) = (i / (nt * nh), (i / nh) % nt, i % nh);
        let x = c.ce[i];
        if !x.is_finite() {
            bail!("CE coefficient {i} [b={bb}, t={t}, k={k}] is {x} (must be finite)");
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
    if let Some((k, v)) = c.metrics.iter().find(|(_, v)| !v.is_finite()) {
        bail!("metric `{k}` is {v} (must be finite)");
    }
    Ok(())
}

/// Validates a manifest: a name, a semver version, unique config keys with TOML defaults.
pub fn check_manifest(m: &Manifest) -> Result<()> {
    if m.name.is_empty()
        || !m
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!(
            "manifest name `{}` must be non-empty ASCII letters, digits, '-' or '_'",
            m.name
        );
    }
    let parts: Vec<&str> = m.version.split(['.', '-', '+']).collect();
    if parts.len() < 3 || !parts[..3].iter().all(|p| p.parse::<u64>().is_ok()) {
        bail!(
            "manifest version `{}` is not semver (MAJOR.MINOR.PATCH)",
            m.version
        );
    }
    let mut seen = HashSet::new();
    for k in &m.config_keys {
        if !seen.insert(&k.name) {
            bail!("config key `{}` is declared twice", k.name);
        }
        if toml::from_str::<toml::Table>(&format!("v = {}", k.default_value)).is_err() {
            bail!(
                "default of config key `{}` is not a TOML value: {}",
                k.name,
                k.default_value
            );
        }
    }
    Ok(())
}
