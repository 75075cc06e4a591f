//! Sampling a token per row of logits on the device the logits live on: only one uniform number per
//! row goes in (drawn on the host from that row's seeded generator) and one token id per row comes out,
//! instead of copying [B, V] logits to the host every generated token.
//!
//! With weights wᵢ = exp((zᵢ − max z)/T) (T the temperature), a row keeps the tokens {i : zᵢ ≥ t}, t the
//! larger of
//! - t_p, the largest logit whose tokens {z ≥ t_p} hold Σw ≥ top_p·Σ_all w (the nucleus; top_p ≥ 1: all),
//! - t_k, the largest logit with #{z ≥ t_k} ≥ top_k (top_k = 0: all);
//!
//! so ties at the threshold are all kept. It then walks the kept tokens in id order and returns the first
//! one at which their cumulative weight exceeds u·Σ_kept w. The CUDA kernel finds t by bisection over the
//! ordered bit patterns of f32 (no sort); the CPU twin ([`sample_row`]) by partial sorting. They
//! differ only where a float rounding decides a near-tie: a target within rounding of a boundary between
//! two tokens, or a nucleus mass within rounding of top_p.

#[cfg(feature = "cuda")]
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

/// How [`sample_rows`] cuts and scales the distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cut {
    /// T > 0: logits are divided by it before the softmax.
    pub temperature: f32,
    /// Keep the smallest set of most likely tokens holding this much probability (≥ 1: all).
    pub top_p: f32,
    /// Keep the k most likely tokens (0: all).
    pub top_k: usize,
}

/// One token id per row of `logits` [B, V] (f32 or bf16; others are cast to f32), drawn with the row's
/// uniform number `u` [B] (f32 in [0, 1)), on `logits`' device: u32 [B].
pub fn sample_rows(logits: &Tensor, u: &Tensor, cut: Cut) -> Result<Tensor> {
    let (b, _) = logits.dims2()?;
    if u.dims() != [b] {
        candle_core::bail!("sample_rows: u must be [{b}], not {:?}", u.dims());
    }
    if cut.temperature.is_nan() || cut.temperature <= 0.0 {
        candle_core::bail!("sample_rows: temperature must be > 0 (use argmax for greedy)");
    }
    let z = match logits.dtype() {
        DType::F32 | DType::BF16 => logits.contiguous()?,
        _ => logits.to_dtype(DType::F32)?,
    };
    let u = u
        .to_dtype(DType::F32)?
        .to_device(z.device())?
        .contiguous()?;
    z.detach().apply_op2_no_bwd(&u, &SampleOp(cut))
}

/// The CPU twin for one row: the token [`sample_rows`] draws from `logits` with uniform `u`.
pub fn sample_row(logits: &[f32], u: f32, cut: Cut) -> u32 {
    let kept = kept_tokens(logits, cut);
    let mass: f64 = kept.iter().map(|k| k.1).sum();
    let target = u as f64 * mass;
    let mut c = 0.0;
    for &(i, w) in &kept {
        c += w;
        if target < c {
            return i;
        }
    }
    kept.last().map_or(0, |k| k.0)
}

/// The tokens a row keeps under `cut`, in id order, with their weights exp((z − max z)/T) (unnormalised):
/// the draw of [`sample_row`] with uniform u is the first at which the cumulative weight exceeds u·Σw.
pub fn kept_tokens(logits: &[f32], cut: Cut) -> Vec<(u32, f64)> {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let inv_t = 1.0 / cut.temperature;
    let weight = |x: f32| ((x - max) * inv_t).exp() as f64;
    let t = threshold(logits, cut, &weight);
    logits
        .iter()
        .enumerate()
        .filter(|(_, &x)| x >= t)
        .map(|(i, &x)| (i as u32, weight(x)))
        .collect()
}

/// The logit threshold t of [`sample_row`]: the larger of the nucleus's and the top-k's (−∞: keep all).
/// The top tokens are found by partial sorts of doubling size, so a peaked row costs O(V).
fn threshold(logits: &[f32], cut: Cut, weight: &dyn Fn(f32) -> f64) -> f32 {
    let v = logits.len();
    let want_k = if cut.top_k > 0 && cut.top_k < v {
        cut.top_k
    } else {
        0
    };
    if cut.top_p >= 1.0 && want_k == 0 {
        return f32::NEG_INFINITY;
    }
    let total: f64 = logits.iter().map(|&x| weight(x)).sum();
    let need = cut.top_p as f64 * total;
    let mut sorted = logits.to_vec();
    let desc = |a: &f32, b: &f32| b.total_cmp(a);
    let mut k = 64.max(want_k).min(v);
    loop {
        if k < v {
            sorted.select_nth_unstable_by(k - 1, desc);
        }
        sorted[..k].sort_by(desc);
        let t_k = if want_k > 0 {
            sorted[want_k - 1]
        } else {
            f32::NEG_INFINITY
        };
        if cut.top_p >= 1.0 {
            return t_k;
        }
        // the nucleus's threshold: the first sorted logit where the mass of {z ≥ it} reaches top_p
        let mut mass = 0.0;
        let mut i = 0;
        while i < k {
            let x = sorted[i];
            while i < k && sorted[i] == x {
                mass += weight(sorted[i]);
                i += 1;
            }
            // ties past the top k are not counted yet: only trust a tie group that ended inside it
            if mass >= need && (i < k || k == v) {
                return x.max(t_k);
            }
        }
        if k == v {
            return t_k.max(sorted[v - 1]);
        }
        k = (2 * k).min(v);
    }
}

struct SampleOp(Cut);

impl CustomOp2 for SampleOp {
    fn name(&self) -> &'static str {
        "wmtp-sample-rows"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let (b, v) = l1.shape().dims2()?;
        let z = super::cpu::f32_vec(s1, l1)?;
        let u = super::cpu::f32_vec(s2, l2)?;
        let ids: Vec<u32> = z
            .par_chunks(v.max(1))
            .zip(u.par_iter())
            .map(|(row, &ur)| sample_row(row, ur, self.0))
            .collect();
        debug_assert_eq!(ids.len(), b);
        Ok((CpuStorage::U32(ids), Shape::from(b)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use super::cuda::{by_dtype, launch, rows_cfg, suffix, view};
        let dev = &s1.device;
        let (b, v) = l1.shape().dims2()?;
        let name = format!("sample_rows_{}", suffix(s1.dtype())?);
        let u = view::<f32>(s2, l2)?;
        let out = unsafe { dev.alloc::<u32>(b) }?;
        let (v_i, inv_t, top_p) = (v as i32, 1.0 / self.0.temperature, self.0.top_p);
        let top_k = self.0.top_k.min(i32::MAX as usize) as i32;
        by_dtype!(s1.dtype(), T => {
            let z = view::<T>(s1, l1)?;
            launch!(dev, name, rows_cfg(b, 1024, 0); &z, &u, &out, &v_i, &inv_t, &top_p, &top_k);
        });
        Ok((
            candle_core::CudaStorage::wrap_cuda_slice(out, dev.clone()),
            Shape::from(b),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use rand::{Rng, SeedableRng};

    /// The kept set by a full sort, most likely first (the definition, written the slow way).
    fn kept_by_full_sort(logits: &[f32], cut: Cut) -> Vec<usize> {
        let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let w = |x: f32| (((x - max) / cut.temperature) as f64).exp();
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        let total: f64 = logits.iter().map(|&x| w(x)).sum();
        let (mut mass, mut n) = (0.0, 0);
        while n < order.len() && (n == 0 || mass < cut.top_p as f64 * total) {
            mass += w(logits[order[n]]);
            n += 1;
        }
        if cut.top_k > 0 {
            n = n.min(cut.top_k);
        }
        let t = logits[order[n - 1]];
        let mut kept: Vec<usize> = (0..logits.len()).filter(|&i| logits[i] >= t).collect();
        kept.sort();
        kept
    }

    fn random_logits(v: usize, spread: f32, seed: u64) -> Vec<f32> {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..v).map(|_| r.random::<f32>() * spread).collect()
    }

    #[test]
    fn the_threshold_keeps_what_a_full_sort_keeps() {
        for (v, spread, top_p, top_k, t) in [
            (50, 1.0, 0.9, 0, 1.0),
            (1000, 8.0, 0.5, 0, 0.8),
            (5000, 20.0, 0.95, 0, 1.0),
            (5000, 20.0, 0.95, 40, 1.0),
            (300, 3.0, 1.0, 7, 0.7),
            (300, 3.0, 0.3, 100, 2.0),
        ] {
            let l = random_logits(v, spread, v as u64);
            let cut = Cut {
                temperature: t,
                top_p,
                top_k,
            };
            let max = l.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let t_cut = threshold(&l, cut, &|x| (((x - max) / t) as f64).exp());
            let kept: Vec<usize> = (0..v).filter(|&i| l[i] >= t_cut).collect();
            assert_eq!(
                kept,
                kept_by_full_sort(&l, cut),
                "V {v} top_p {top_p} top_k {top_k}"
            );
        }
    }

    #[test]
    fn draws_follow_the_cut_distribution() -> Result<()> {
        // 4 tokens, p ∝ exp(z): top_p 0.8 keeps the two most likely (0.64 + 0.24 ≥ 0.8)
        let z = [1.0f32, 2.0, 0.0, 3.0];
        let cut = Cut {
            temperature: 1.0,
            top_p: 0.8,
            top_k: 0,
        };
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut counts = [0usize; 4];
        let n = 20_000;
        for _ in 0..n {
            counts[sample_row(&z, r.random(), cut) as usize] += 1;
        }
        assert_eq!((counts[0], counts[2]), (0, 0), "outside the nucleus");
        let p3 = 3f64.exp() / (3f64.exp() + 2f64.exp());
        let f3 = counts[3] as f64 / n as f64;
        assert!((f3 - p3).abs() < 0.015, "{f3} vs {p3}");
        // top_k 1 is greedy; a tiny temperature too
        for u in [0.0, 0.5, 0.999] {
            let greedy = Cut {
                top_k: 1,
                top_p: 1.0,
                temperature: 1.0,
            };
            assert_eq!(sample_row(&z, u, greedy), 3);
        }
        // the tensor op on the CPU runs the twin per row
        let logits = Tensor::new(&[z, [0.0, 0.0, 9.0, 0.0]], &Device::Cpu)?;
        let u = Tensor::new(&[0.99f32, 0.5], &Device::Cpu)?;
        let ids: Vec<u32> = sample_rows(&logits, &u, cut)?.to_vec1()?;
        assert_eq!(ids, [sample_row(&z, 0.99, cut), 2]);
        Ok(())
    }

    #[test]
    fn the_walk_is_in_id_order_with_the_uniform_as_the_quantile() {
        // equal logits: u in [i/4, (i+1)/4) picks token i
        let z = [0.5f32; 4];
        let cut = Cut {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
        };
        for (u, want) in [(0.0, 0), (0.26, 1), (0.74, 2), (0.9999, 3)] {
            assert_eq!(sample_row(&z, u, cut), want);
        }
    }
}
