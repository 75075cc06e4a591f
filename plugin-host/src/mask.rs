//! The cross-entropy mask of the contract (docs/design.md, "the per-token quantities"): head k at position
//! t predicts token t+k+1, so it is trained there iff that token exists and is a target.

/// M[b,t,k] = 1 iff t+k+1 < T and m[b, t+k+1] = 1, flat [B·T·H] (b-major, then t, then k), from the
/// target mask m, flat [B·T].
pub fn ce_mask(target_mask: &[u8], b: usize, t: usize, h: usize) -> Vec<u8> {
    let mut m = vec![0u8; b * t * h];
    for s in 0..b {
        for p in 0..t {
            for k in 0..h {
                if p + k + 1 < t && target_mask[s * t + p + k + 1] != 0 {
                    m[(s * t + p) * h + k] = 1;
                }
            }
        }
    }
    m
}

#[cfg(test)]
mod tests {
    #[test]
    fn head_k_at_t_sees_token_t_plus_k_plus_1() {
        // one sequence, T = 4, targets at positions 2 and 3, two heads
        let m = super::ce_mask(&[0, 0, 1, 1], 1, 4, 2);
        // t=0: k0→1 (0), k1→2 (1); t=1: k0→2 (1), k1→3 (1); t=2: k0→3 (1), k1→4 (out); t=3: none
        assert_eq!(m, vec![0, 1, 1, 1, 1, 0, 0, 0]);
    }
}
