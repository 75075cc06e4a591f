//! Typed, checked views over a batch's flat arrays: `[b,t,k]` and `[b,t]` indexing (design.md §4 layout).

use crate::Batch;

/// A batch with its lengths checked, indexed by (sequence, position, head).
#[derive(Debug, Clone, Copy)]
pub struct BatchView<'a> {
    /// The batch.
    pub batch: &'a Batch,
    /// B.
    pub b: usize,
    /// T.
    pub t: usize,
    /// H.
    pub h: usize,
    /// λ_k, the heads' loss weights ([`HeadWeights`](crate::HeadWeights)); empty = every head weighs 1.
    pub head_weights: &'a [f64],
}

fn check<T>(name: &str, v: &[T], n: usize) -> Result<(), String> {
    if v.len() != n {
        return Err(format!(
            "batch field `{name}` has {} entries, expected {n}",
            v.len()
        ));
    }
    Ok(())
}

impl<'a> BatchView<'a> {
    /// Checks every present array's length against B, T, H.
    pub fn new(batch: &'a Batch) -> Result<Self, String> {
        let (b, t, h) = (
            batch.sequences as usize,
            batch.positions as usize,
            batch.heads as usize,
        );
        check("ce", &batch.ce, b * t * h)?;
        check("ce-mask", &batch.ce_mask, b * t * h)?;
        check("target-mask", &batch.target_mask, b * t)?;
        if let Some(v) = &batch.values {
            check("values", v, b * t)?;
        }
        if let Some(v) = &batch.ref_ce {
            check("ref-ce", v, b * t)?;
        }
        if let Some(v) = &batch.rewards {
            check("rewards", v, b)?;
        }
        if let Some(v) = &batch.pair_ids {
            check("pair-ids", v, b)?;
        }
        if let Some(v) = &batch.tokens {
            check("tokens", v, b * t)?;
        }
        Ok(BatchView {
            batch,
            b,
            t,
            h,
            head_weights: &[],
        })
    }

    /// The same view with the heads' loss weights λ (one per head, from
    /// [`HeadWeights::resolve`](crate::HeadWeights::resolve)), which every loss helper of [`crate::maths`]
    /// applies.
    pub fn with_head_weights(self, weights: &'a [f64]) -> Result<Self, String> {
        if weights.len() != self.h {
            return Err(format!(
                "{} head weights for a batch of {} heads",
                weights.len(),
                self.h
            ));
        }
        Ok(BatchView {
            head_weights: weights,
            ..self
        })
    }

    /// λ_k (1 when no weights were given).
    pub fn head_weight(&self, k: usize) -> f64 {
        self.head_weights.get(k).copied().unwrap_or(1.0)
    }

    /// Plain mean CE of every head over its valid tokens, Σ CE·M / Σ M (None for a head without any):
    /// the `ce_h{k}` metric, whatever the weighting.
    pub fn head_mean_ce(&self) -> Vec<Option<f64>> {
        let mut sum = vec![0f64; self.h];
        let mut n = vec![0u32; self.h];
        if self.h > 0 {
            let rows = self
                .batch
                .ce
                .chunks_exact(self.h)
                .zip(self.batch.ce_mask.chunks_exact(self.h));
            for (ce, m) in rows {
                for k in 0..self.h {
                    if m[k] != 0 {
                        sum[k] += ce[k] as f64;
                        n[k] += 1;
                    }
                }
            }
        }
        sum.iter()
            .zip(&n)
            .map(|(&s, &c)| (c > 0).then(|| s / c as f64))
            .collect()
    }

    /// Flat index of (b, t, k) in [B,T,H] arrays.
    pub fn idx3(&self, b: usize, t: usize, k: usize) -> usize {
        (b * self.t + t) * self.h + k
    }

    /// Flat index of (b, t) in [B,T] arrays.
    pub fn idx2(&self, b: usize, t: usize) -> usize {
        b * self.t + t
    }

    /// CE[b,t,k].
    pub fn ce(&self, b: usize, t: usize, k: usize) -> f32 {
        self.batch.ce[self.idx3(b, t, k)]
    }

    /// M[b,t,k] as a bool.
    pub fn valid(&self, b: usize, t: usize, k: usize) -> bool {
        self.batch.ce_mask[self.idx3(b, t, k)] != 0
    }

    /// m[b,t] as a bool.
    pub fn target(&self, b: usize, t: usize) -> bool {
        self.batch.target_mask[self.idx2(b, t)] != 0
    }

    /// The values, or an error saying the plugin needs them.
    pub fn values(&self) -> Result<&'a [f32], String> {
        self.batch
            .values
            .as_deref()
            .ok_or_else(|| "batch has no values (manifest must need `values`)".into())
    }

    /// The reference CE, or an error.
    pub fn ref_ce(&self) -> Result<&'a [f32], String> {
        self.batch
            .ref_ce
            .as_deref()
            .ok_or_else(|| "batch has no ref-ce (manifest must need `reference`)".into())
    }

    /// The rewards, or an error.
    pub fn rewards(&self) -> Result<&'a [f32], String> {
        self.batch
            .rewards
            .as_deref()
            .ok_or_else(|| "batch has no rewards (manifest must need `rewards`)".into())
    }

    /// The token ids x[b,t] ([B,T]), or an error saying the plugin needs them.
    pub fn tokens(&self) -> Result<&'a [u32], String> {
        self.batch
            .tokens
            .as_deref()
            .ok_or_else(|| "batch has no tokens (manifest must need `tokens`)".into())
    }

    /// The token head k predicts at position t, x[b, t+k+1] (None past the sequence's end or without
    /// `tokens` in the batch): the target whose CE is `ce(b, t, k)`.
    pub fn target_token(&self, b: usize, t: usize, k: usize) -> Option<u32> {
        let at = t + k + 1;
        (at < self.t)
            .then(|| self.batch.tokens.as_ref().map(|x| x[self.idx2(b, at)]))
            .flatten()
    }

    /// Number of valid tokens of head k: Σ_{b,t} M[b,t,k].
    pub fn valid_count(&self, k: usize) -> usize {
        self.valid_counts()[k] as usize
    }

    /// Valid-token counts of every head, in one pass.
    pub fn valid_counts(&self) -> Vec<f64> {
        let mut n = vec![0u32; self.h];
        if self.h > 0 {
            for row in self.batch.ce_mask.chunks_exact(self.h) {
                for (c, &m) in n.iter_mut().zip(row) {
                    *c += (m != 0) as u32;
                }
            }
        }
        n.into_iter().map(f64::from).collect()
    }
}
