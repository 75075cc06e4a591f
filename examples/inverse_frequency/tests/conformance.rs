//! The inverse-frequency example passes wmtp's conformance kit (which gives it token ids and the kit's
//! vocabulary), and its coefficients are the weights of its formula, computed here from the batch alone.

use std::path::PathBuf;
use wmtp_plugin_host::conformance::{assert_conformant, kit_vocabulary, synthetic_batch};
use wmtp_plugin_host::{InputKind, Plugin, PluginLimits, PluginRuntime};

fn wasm() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../inverse_frequency.wasm");
    assert!(
        p.exists(),
        "{} missing: run scripts/build-plugins.sh",
        p.display()
    );
    p
}

#[test]
fn inverse_frequency_is_conformant() {
    assert_conformant(&wasm(), "");
    assert_conformant(&wasm(), "alpha = 1.0\nwhitespace_weight = 0.25");
    assert_conformant(&wasm(), "head_weights = { decay = 0.5 }");
}

/// ∂L/∂CE[b,t,k] = w·M / Σ w·M per head, divided by the number of heads with tokens (uniform λ), where
/// w(x) = (1 + c(x))^−α · s(x) over the counts of the steps before.
fn expected(
    batch: &wmtp_plugin_host::Batch,
    counts: &[f64],
    alpha: f64,
    ws: f64,
    pieces: &[String],
) -> Vec<f64> {
    let (b, t, h) = (
        batch.sequences as usize,
        batch.positions as usize,
        batch.heads as usize,
    );
    let x = batch.tokens.as_ref().unwrap();
    let w = |bi: usize, ti: usize, k: usize| {
        let id = x[bi * t + ti + k + 1] as usize;
        let white = !pieces[id].is_empty()
            && pieces[id]
                .chars()
                .all(|c| c.is_whitespace() || "ĠĊĉč▁".contains(c));
        (1.0 + counts.get(id).copied().unwrap_or(0.0)).powf(-alpha) * if white { ws } else { 1.0 }
    };
    let mut den = vec![0.0; h];
    for bi in 0..b {
        for ti in 0..t {
            for (k, d) in den.iter_mut().enumerate() {
                if batch.ce_mask[(bi * t + ti) * h + k] != 0 {
                    *d += w(bi, ti, k);
                }
            }
        }
    }
    let heads_with_tokens = den.iter().filter(|&&d| d > 0.0).count() as f64;
    let mut coef = vec![0.0; b * t * h];
    for bi in 0..b {
        for ti in 0..t {
            for (k, d) in den.iter().enumerate() {
                let i = (bi * t + ti) * h + k;
                if batch.ce_mask[i] != 0 {
                    coef[i] = w(bi, ti, k) / d / heads_with_tokens;
                }
            }
        }
    }
    coef
}

#[test]
fn rare_tokens_weigh_more_once_counted() {
    let rt = std::sync::Arc::new(PluginRuntime::new(PluginLimits::default()).unwrap());
    let mut p = Plugin::load(&rt, &wasm()).unwrap();
    assert_eq!(p.manifest().needs, vec![InputKind::Tokens]);
    p.set_vocabulary(kit_vocabulary());
    p.configure("alpha = 0.7\nwhitespace_weight = 0.5").unwrap();
    let pieces: Vec<String> = kit_vocabulary().as_ref().clone();
    let first = synthetic_batch(4, 24, 3, &[InputKind::Tokens], 11, false);
    let later = synthetic_batch(4, 24, 3, &[InputKind::Tokens], 12, false);
    // step 0: nothing counted yet, so only the whitespace factor differs between tokens
    let c0 = p.weigh(&first, true).unwrap();
    let want0 = expected(&first, &[], 0.7, 0.5, &pieces);
    p.after_step(0).unwrap();
    // step 1: the first batch's trained tokens are counted
    let mut counts = vec![0.0; pieces.len()];
    let x = first.tokens.as_ref().unwrap();
    for (i, &id) in x.iter().enumerate() {
        if first.target_mask[i] != 0 {
            counts[id as usize] += 1.0;
        }
    }
    let c1 = p.weigh(&later, false).unwrap();
    let want1 = expected(&later, &counts, 0.7, 0.5, &pieces);
    for (got, want) in [(&c0.ce, &want0), (&c1.ce, &want1)] {
        for (i, (g, w)) in got.iter().zip(want.iter()).enumerate() {
            assert!((*g as f64 - w).abs() < 1e-6, "coefficient {i}: {g} vs {w}");
        }
    }
    // the counts changed the weights: not a multiple of the step-0 formula
    let uncounted = expected(&later, &[], 0.7, 0.5, &pieces);
    assert!(want1
        .iter()
        .zip(&uncounted)
        .any(|(a, b)| (a - b).abs() > 1e-4));
}
