//! The unweighted cross-entropy of a forward pass, per head and averaged over heads: what the step
//! reports as `ce` and validation as `val_ce` / `val_ce_h*`, whatever the pipeline's weights.

use super::engine::ForwardState;

/// Per-head sums of the unweighted CE over valid tokens and the valid-token counts:
/// (Σ_t m[t,k]·CE[t,k], Σ_t m[t,k]) for each head k.
pub fn head_ce_sums(st: &ForwardState) -> (Vec<f64>, Vec<f64>) {
    let h = st.shape.2;
    let (mut s, mut n) = (vec![0f64; h], vec![0f64; h]);
    for (i, (&c, &m)) in st.ce.iter().zip(&st.ce_mask).enumerate() {
        s[i % h] += c as f64 * m as f64;
        n[i % h] += m as f64;
    }
    (s, n)
}

/// Unweighted CE: per-head mean over valid tokens, averaged over heads with tokens.
pub fn plain_ce(st: &ForwardState) -> f64 {
    let (s, n) = head_ce_sums(st);
    let h = s.len();
    let used: Vec<f64> = (0..h)
        .filter(|&k| n[k] > 0.0)
        .map(|k| s[k] / n[k])
        .collect();
    if used.is_empty() {
        0.0
    } else {
        used.iter().sum::<f64>() / used.len() as f64
    }
}
