//! The unbiased pass@k estimator of the HumanEval paper (Chen et al. 2021, §2.1): with n samples of
//! which c pass, pass@k = 1 − C(n−c, k) / C(n, k), the probability that k samples drawn without
//! replacement from the n include a passing one; computed as 1 − Π_{i=n−c+1}^{n} (1 − k/i), which
//! never forms the large binomials.

/// pass@k of one problem with `n` samples of which `c` passed (`k` ≤ `n`; 1 when n − c < k).
pub fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    assert!(
        c <= n && k >= 1 && k <= n,
        "pass@k needs c ≤ n and 1 ≤ k ≤ n"
    );
    if n - c < k {
        return 1.0;
    }
    1.0 - ((n - c + 1)..=n)
        .map(|i| 1.0 - k as f64 / i as f64)
        .product::<f64>()
}

/// The mean of [`pass_at_k`] over problems given as (n, c) pairs; `None` for no problem or k > some n.
pub fn mean_pass_at_k(results: &[(usize, usize)], k: usize) -> Option<f64> {
    if results.is_empty() || results.iter().any(|&(n, _)| k > n) {
        return None;
    }
    Some(
        results
            .iter()
            .map(|&(n, c)| pass_at_k(n, c, k))
            .sum::<f64>()
            / results.len() as f64,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The binomial formula itself, in exact integers (small n only).
    fn by_binomials(n: u64, c: u64, k: u64) -> f64 {
        fn choose(n: u64, k: u64) -> u128 {
            if k > n {
                return 0;
            }
            (0..k).fold(1u128, |acc, i| acc * (n - i) as u128 / (i + 1) as u128)
        }
        1.0 - choose(n - c, k) as f64 / choose(n, k) as f64
    }

    #[test]
    fn matches_the_binomial_formula() {
        for n in 1..=20u64 {
            for c in 0..=n {
                for k in 1..=n {
                    let (a, b) = (
                        pass_at_k(n as usize, c as usize, k as usize),
                        by_binomials(n, c, k),
                    );
                    assert!((a - b).abs() < 1e-12, "n {n} c {c} k {k}: {a} vs {b}");
                }
            }
        }
        // pass@1 is the share of passing samples
        assert!((pass_at_k(10, 3, 1) - 0.3).abs() < 1e-12);
        assert_eq!(pass_at_k(10, 0, 10), 0.0);
        assert_eq!(pass_at_k(10, 1, 10), 1.0);
        assert!((mean_pass_at_k(&[(10, 3), (10, 0)], 1).unwrap() - 0.15).abs() < 1e-12);
        assert_eq!(mean_pass_at_k(&[(5, 1)], 10), None);
    }
}
