//! Per-token maths the pipelines share, each with its derivative where a loss is involved.

use crate::BatchView;

/// The MTP CE with per-token weights w and the view's head weights λ (design.md §5):
/// L = Σ_{k: n_k>0} λ_k·L_k / Σ_{k: n_k>0} λ_k with L_k = Σ_{b,t} w·CE·M / n_k and n_k = Σ_{b,t} M
/// (with uniform λ: the mean over heads with tokens).
/// Returns (∂L/∂CE as [B,T,H], L); `w` is evaluated only where M = 1.
pub fn weighted_ce(v: &BatchView, w: impl Fn(usize, usize, usize) -> f64) -> (Vec<f32>, f64) {
    weighted_ce_with_denominators(v, &v.valid_counts(), w)
}

/// A loss that is a function of each token's CE: L = the λ-weighted mean over heads k with n_k > 0 of
/// [ Σ_{b,t} ℓ(CE[b,t,k])·M / n_k ], where `f(ce)` returns (ℓ(ce), dℓ/dce). Returns (∂L/∂CE as [B,T,H], L);
/// e.g. the plain loss is `f = |ce| (ce, 1.0)`, a focal loss `(q^γ·ce, q^γ + γ·ce·(1−q)·q^{γ−1})`.
pub fn per_token_loss(v: &BatchView, f: impl Fn(f64) -> (f64, f64)) -> (Vec<f32>, f64) {
    let (unit, _) = weighted_ce(v, |_, _, _| 1.0); // M / (n_k·H_valid)
    let mut loss = 0.0;
    let coef = unit
        .iter()
        .zip(&v.batch.ce)
        .map(|(&u, &ce)| {
            if u == 0.0 {
                return 0.0;
            }
            let (l, d) = f(ce as f64);
            loss += u as f64 * l;
            (u as f64 * d) as f32
        })
        .collect();
    (coef, loss)
}

/// As [`weighted_ce`] but with a given denominator d_k per head (e.g. Σ w for "normalize by weights"):
/// L = Σ_{k: d_k>0} λ_k·[Σ w·CE·M / d_k] / Σ_{k: d_k>0} λ_k; heads whose denominator is 0 are left out.
pub fn weighted_ce_with_denominators(
    v: &BatchView,
    denom: &[f64],
    w: impl Fn(usize, usize, usize) -> f64,
) -> (Vec<f32>, f64) {
    let mut coef = vec![0f32; v.b * v.t * v.h];
    let denom: Vec<f64> = (0..v.h)
        .map(|k| denom.get(k).copied().unwrap_or(0.0))
        .collect();
    let lambda_used: f64 = (0..v.h)
        .filter(|&k| denom[k] > 0.0)
        .map(|k| v.head_weight(k))
        .sum();
    let mut loss = 0.0;
    if lambda_used <= 0.0 || v.h == 0 {
        return (coef, 0.0);
    }
    let scale: Vec<f64> = (0..v.h)
        .map(|k| {
            if denom[k] > 0.0 {
                v.head_weight(k) / (denom[k] * lambda_used)
            } else {
                0.0
            }
        })
        .collect();
    // one pass over (b, t) rows of H entries: contiguous, no per-entry index arithmetic
    let rows = coef
        .chunks_exact_mut(v.h)
        .zip(v.batch.ce_mask.chunks_exact(v.h))
        .zip(v.batch.ce.chunks_exact(v.h));
    for (row, ((c, m), ce)) in rows.enumerate() {
        let (b, t) = (row / v.t, row % v.t);
        for k in 0..v.h {
            if m[k] != 0 && scale[k] > 0.0 {
                let x = w(b, t, k) * scale[k];
                c[k] = x as f32;
                loss += x * ce[k] as f64;
            }
        }
    }
    (coef, loss)
}

/// Σ x·m / Σ m (0 when Σ m = 0).
pub fn masked_mean(x: &[f32], m: &[u8]) -> f64 {
    let (s, n) = x
        .iter()
        .zip(m)
        .filter(|(_, &m)| m != 0)
        .fold((0.0, 0usize), |(s, n), (&x, _)| (s + x as f64, n + 1));
    if n == 0 {
        0.0
    } else {
        s / n as f64
    }
}

/// The q-quantile with linear interpolation between order statistics (numpy's default `linear`):
/// position p = q·(n−1), value x₍⌊p⌋₎ + (p − ⌊p⌋)·(x₍⌈p⌉₎ − x₍⌊p⌋₎). None for no data.
/// Runs in O(n) (selection, not a full sort); reorders `values`.
pub fn quantile_linear(values: &mut [f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let p = q.clamp(0.0, 1.0) * (values.len() - 1) as f64;
    let lo = p.floor() as usize;
    let (_, &mut x_lo, upper) = values.select_nth_unstable_by(lo, |a, b| a.total_cmp(b));
    let x_hi = if p > lo as f64 {
        upper.iter().copied().fold(f64::INFINITY, f64::min)
    } else {
        x_lo
    };
    Some(x_lo + (p - lo as f64) * (x_hi - x_lo))
}

/// Last position t with m[b,t] = 1 (the sequence's terminal response token), if any.
pub fn last_target(v: &BatchView, b: usize) -> Option<usize> {
    (0..v.t).rev().find(|&t| v.target(b, t))
}

/// GAE over one sequence's values V[0..=last] (design.md §5.3): δ_t = γ·V_t − V_{t−1} with V_{−1} = `v_init`;
/// A_t = δ_t + γλ·A_{t+1}, from t = last down to 0. Returns A[0..=last] (unmasked).
pub fn gae(values: &[f32], last: usize, gamma: f64, lambda: f64, v_init: f64) -> Vec<f64> {
    let mut a = vec![0.0; last + 1];
    let mut next = 0.0;
    for t in (0..=last).rev() {
        let prev = if t == 0 { v_init } else { values[t - 1] as f64 };
        let delta = gamma * values[t] as f64 - prev;
        next = delta + gamma * lambda * next;
        a[t] = next;
    }
    a
}

/// Monte-Carlo advantages over one sequence (design.md §5.3, `advantage = "mc"`): A_t = r − V_t for
/// t = 0..=last — the outcome against the value, the original's special case of λ = γ = 1. Returns
/// A[0..=last] (unmasked).
pub fn mc_advantages(values: &[f32], last: usize, reward: f64) -> Vec<f64> {
    values[..=last].iter().map(|&v| reward - v as f64).collect()
}

/// λ-return targets over one sequence (design.md §5.2): G_last = r; G_t = (1−λ)·γ·V_{t+1} + λ·γ·G_{t+1}.
/// λ = 1 gives γ^{last−t}·r (Monte-Carlo); λ = 0 gives γ·V_{t+1}. Returns G[0..=last].
pub fn lambda_returns(
    values: &[f32],
    last: usize,
    reward: f64,
    gamma: f64,
    lambda: f64,
) -> Vec<f64> {
    let mut g = vec![0.0; last + 1];
    g[last] = reward;
    for t in (0..last).rev() {
        g[t] = (1.0 - lambda) * gamma * values[t + 1] as f64 + lambda * gamma * g[t + 1];
    }
    g
}

/// Numerically stable log σ(x).
pub fn log_sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        -(-x).exp().ln_1p()
    } else {
        x - x.exp().ln_1p()
    }
}

/// σ(x).
pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// Regression of values on targets (design.md §5.2 `mc_mse`): per sequence the masked mean of ℓ(V − G), then
/// the mean over sequences with ≥ 1 target token; ℓ(d) = d², or smooth-L1 with `huber_delta` δ
/// (½d²/δ if |d| < δ, else |d| − ½δ). `target(b, t)` is read only where m[b,t] = 1.
/// Returns (L, ∂L/∂V as [B,T]).
pub fn value_regression(
    v: &BatchView,
    values: &[f32],
    target: impl Fn(usize, usize) -> f64,
    huber_delta: Option<f64>,
) -> (f64, Vec<f32>) {
    let mut grad = vec![0f32; v.b * v.t];
    let seqs: Vec<(usize, usize)> = (0..v.b)
        .map(|b| (b, (0..v.t).filter(|&t| v.target(b, t)).count()))
        .filter(|&(_, n)| n > 0)
        .collect();
    if seqs.is_empty() {
        return (0.0, grad);
    }
    let mut loss = 0.0;
    for &(b, n) in &seqs {
        let scale = 1.0 / (n as f64 * seqs.len() as f64);
        for t in (0..v.t).filter(|&t| v.target(b, t)) {
            let d = values[v.idx2(b, t)] as f64 - target(b, t);
            let (l, dl) = match huber_delta {
                Some(delta) if d.abs() < delta => (0.5 * d * d / delta, d / delta),
                Some(delta) => (d.abs() - 0.5 * delta, d.signum()),
                None => (d * d, 2.0 * d),
            };
            loss += scale * l;
            grad[v.idx2(b, t)] = (scale * dl) as f32;
        }
    }
    (loss, grad)
}

/// Pairwise ranking of mean values (design.md §5.2): v̄_b = Σ_t V·m / (Σ_t m + 1e−8); over the pairs (pos, neg)
/// given by pair ids and rewards, L = coef · mean −log σ(v̄_pos − v̄_neg).
#[derive(Debug, Clone, Default)]
pub struct PairwiseResult {
    /// L.
    pub loss: f64,
    /// ∂L/∂V, [B,T].
    pub grad: Vec<f32>,
    /// Share of pairs with v̄_pos > v̄_neg (ties count one half).
    pub accuracy: f64,
    /// mean(v̄_pos) − mean(v̄_neg).
    pub margin: f64,
    /// Number of complete pairs.
    pub pairs: usize,
}

/// The (positive, negative) sequence index pairs: sequences sharing a pair id ≥ 0, one with reward > 0.5
/// and one with reward ≤ 0.5.
pub fn pairs(pair_ids: &[i32], rewards: &[f32]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for (i, &id) in pair_ids.iter().enumerate() {
        if id < 0 || rewards[i] <= 0.5 {
            continue;
        }
        if let Some(j) =
            (0..pair_ids.len()).find(|&j| j != i && pair_ids[j] == id && rewards[j] <= 0.5)
        {
            out.push((i, j));
        }
    }
    out
}

/// Computes [`PairwiseResult`] for `coef`.
pub fn pairwise_ranking(
    v: &BatchView,
    values: &[f32],
    pair_ids: &[i32],
    rewards: &[f32],
    coef: f64,
) -> PairwiseResult {
    let mut r = PairwiseResult {
        grad: vec![0f32; v.b * v.t],
        ..Default::default()
    };
    let mean_v: Vec<(f64, f64)> = (0..v.b)
        .map(|b| {
            let n = (0..v.t).filter(|&t| v.target(b, t)).count() as f64 + 1e-8;
            let s: f64 = (0..v.t)
                .filter(|&t| v.target(b, t))
                .map(|t| values[v.idx2(b, t)] as f64)
                .sum();
            (s / n, n)
        })
        .collect();
    let ps = pairs(pair_ids, rewards);
    r.pairs = ps.len();
    if ps.is_empty() {
        return r;
    }
    let np = ps.len() as f64;
    let mut grad = vec![0f64; v.b];
    let (mut pos_sum, mut neg_sum, mut correct) = (0.0, 0.0, 0.0f64);
    for &(p, n) in &ps {
        let d = mean_v[p].0 - mean_v[n].0;
        r.loss -= coef * log_sigmoid(d) / np;
        let g = -coef * sigmoid(-d) / np; // ∂L/∂d
        grad[p] += g;
        grad[n] -= g;
        pos_sum += mean_v[p].0;
        neg_sum += mean_v[n].0;
        // a tie (e.g. an untrained head giving every sequence the same value) counts as half right
        correct += if d > 0.0 {
            1.0
        } else if d == 0.0 {
            0.5
        } else {
            0.0
        };
    }
    for b in 0..v.b {
        for t in (0..v.t).filter(|&t| v.target(b, t)) {
            r.grad[v.idx2(b, t)] = (grad[b] / mean_v[b].1) as f32;
        }
    }
    r.accuracy = correct / np;
    r.margin = (pos_sum - neg_sum) / np;
    r
}

/// Exponential moving statistics of a quantity (mean and std), with warm-up (design.md §5.3 step 4).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EmaStats {
    /// Smoothed mean (starts 0).
    pub mean: f64,
    /// Smoothed std (starts 1).
    pub std: f64,
    /// Updates so far.
    pub updates: u64,
}

impl Default for EmaStats {
    fn default() -> Self {
        EmaStats {
            mean: 0.0,
            std: 1.0,
            updates: 0,
        }
    }
}

impl EmaStats {
    /// Takes a step's statistics from Σx, Σx², n: batch mean and population std
    /// s = √max(E[x²] − mean², 1e−8). For update n ≤ `warmup`: ema = ((n−1)/W)·ema + (1 − (n−1)/W)·batch;
    /// afterwards ema = (1 − α)·ema + α·batch. Does nothing when n = 0.
    pub fn update(&mut self, sum: f64, sum_sq: f64, n: f64, warmup: u64, alpha: f64) {
        if n <= 0.0 {
            return;
        }
        let mean = sum / n;
        let std = (sum_sq / n - mean * mean).max(1e-8).sqrt();
        self.updates += 1;
        let keep = if self.updates <= warmup {
            (self.updates - 1) as f64 / warmup as f64
        } else {
            1.0 - alpha
        };
        self.mean = keep * self.mean + (1.0 - keep) * mean;
        self.std = keep * self.std + (1.0 - keep) * std;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Batch;

    /// B = 1, T = 2, H = 2: head 0 CE [2, 4] both valid, head 1 CE [6, 8] with only t = 0 valid.
    fn two_head_batch() -> Batch {
        Batch {
            sequences: 1,
            positions: 2,
            heads: 2,
            step: 0,
            ce: vec![2.0, 6.0, 4.0, 8.0],
            ce_mask: vec![1, 1, 1, 0],
            target_mask: vec![1, 1],
            values: None,
            ref_ce: None,
            rewards: None,
            pair_ids: None,
            tokens: None,
        }
    }

    #[test]
    fn head_weights_make_a_weighted_mean_of_the_heads_losses() {
        let batch = two_head_batch();
        let v = BatchView::new(&batch).unwrap();
        // uniform: L = (3 + 6) / 2, coefficients M / (n_k · 2)
        let (c, l) = weighted_ce(&v, |_, _, _| 1.0);
        assert_eq!((c, l), (vec![0.25, 0.5, 0.25, 0.0], 4.5));
        // λ = [1, 0.25]: L = (1·3 + 0.25·6) / 1.25 = 3.6; head 0 coefficients 1/(2·1.25), head 1 0.25/1.25
        let lambda = [1.0, 0.25];
        let v = v.with_head_weights(&lambda).unwrap();
        let (c, l) = weighted_ce(&v, |_, _, _| 1.0);
        assert!((l - 3.6).abs() < 1e-12, "{l}");
        assert_eq!(c, vec![0.4, 0.2, 0.4, 0.0]);
        // per_token_loss and the per-head mean CE metric see the same weights / ignore them
        let (c2, l2) = per_token_loss(&v, |ce| (ce, 1.0));
        assert_eq!(c2, c);
        assert!((l2 - l).abs() < 1e-6, "{l2}");
        assert_eq!(v.head_mean_ce(), vec![Some(3.0), Some(6.0)]);
        // λ = [1, 0]: next-token training of head 0 alone
        let only0 = [1.0, 0.0];
        let (c, l) = weighted_ce(&v.with_head_weights(&only0).unwrap(), |_, _, _| 1.0);
        assert_eq!((c, l), (vec![0.5, 0.0, 0.5, 0.0], 3.0));
        assert!(v.with_head_weights(&[1.0]).is_err());
    }

    #[test]
    fn mc_advantages_are_the_reward_minus_the_values() {
        let a = mc_advantages(&[0.5, 0.7, 0.9, 0.2], 2, 1.0);
        assert_eq!(a.len(), 3);
        for (x, want) in a.iter().zip([0.5, 0.3, 0.1]) {
            assert!((x - want).abs() < 1e-6, "{a:?}");
        }
    }

    #[test]
    fn gae_golden() {
        let a = gae(&[0.5, 0.7, 0.9], 2, 1.0, 0.95, 0.5);
        for (x, want) in a.iter().zip([0.3705, 0.39, 0.20]) {
            assert!((x - want).abs() < 1e-6, "{a:?}");
        }
    }

    #[test]
    fn lambda_return_limits() {
        let v = [0.1f32, 0.4, 0.3, 0.8];
        assert_eq!(lambda_returns(&v, 3, 1.0, 1.0, 1.0), vec![1.0; 4]);
        let g0 = lambda_returns(&v, 3, 1.0, 0.9, 0.0);
        for t in 0..3 {
            assert!((g0[t] - 0.9 * v[t + 1] as f64).abs() < 1e-7);
        }
    }

    #[test]
    fn quantile_matches_numpy_linear() {
        // numpy.quantile([1, 2, 3, 4, 10], 0.3) == 2.2 ; 0.9 → 7.6
        let mut x = [4.0, 1.0, 10.0, 3.0, 2.0];
        assert!((quantile_linear(&mut x, 0.3).unwrap() - 2.2).abs() < 1e-12);
        assert!((quantile_linear(&mut x, 0.9).unwrap() - 7.6).abs() < 1e-12);
        assert_eq!(quantile_linear(&mut x, 1.0), Some(10.0));
        assert_eq!(quantile_linear(&mut x, 0.0), Some(1.0));
        assert_eq!(quantile_linear(&mut [], 0.5), None);
    }

    #[test]
    fn stable_log_sigmoid() {
        assert!((log_sigmoid(0.0) + std::f64::consts::LN_2).abs() < 1e-12);
        assert!((log_sigmoid(-800.0) + 800.0).abs() < 1e-9);
        assert!(log_sigmoid(800.0).abs() < 1e-12);
    }

    #[test]
    fn ema_warmup_then_decay() {
        let mut e = EmaStats::default();
        e.update(2.0, 4.0, 2.0, 10, 0.1); // mean 1, std √max(2−1, ·) = 1
        assert_eq!((e.mean, e.std), (1.0, 1.0));
        e.update(6.0, 18.0, 2.0, 10, 0.1); // mean 3, std 0 → 1e-4; weight 0.1 on old
        assert!((e.mean - (0.1 + 0.9 * 3.0)).abs() < 1e-12);
    }
}
