//! Rotary position embedding in Meta's interleaved-pair convention: the pairs (2i, 2i+1) of each head
//! are rotated by the angle t·θ^(−2i/head_dim) at position t.

use candle_core::{DType, Device, Result, Tensor, D};
use std::sync::Mutex;

/// cos/sin tables for positions 0..T, shaped [T, head_dim/2].
#[derive(Debug, Clone)]
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
}

/// Tables already built, per (device, head_dim, θ bits, T), most recent last, at most
/// [`CACHED_TABLES`]: a training step asks for the same tables in every forward and backward, and
/// building them (~131k sin/cos for T = 2048) took host time while the GPU waited.
static CACHE: Mutex<Vec<CachedTables>> = Mutex::new(Vec::new());
/// (device, head_dim, θ bits, T, tables).
type CachedTables = (Device, usize, u64, usize, Rope);
/// How many sets of tables [`Rope::shared`] keeps.
const CACHED_TABLES: usize = 8;

impl Rope {
    /// The tables for positions 0..`seq_len` on `dev`: [`Rope::new`]'s, built once and then shared
    /// (the tensors are immutable, so sharing them is the same as building them again).
    pub fn shared(head_dim: usize, theta: f64, seq_len: usize, dev: &Device) -> Result<Self> {
        let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        let key = |d: &Device, hd: usize, th: u64, t: usize| {
            d.same_device(dev) && hd == head_dim && th == theta.to_bits() && t == seq_len
        };
        if let Some(i) = cache
            .iter()
            .position(|(d, hd, th, t, _)| key(d, *hd, *th, *t))
        {
            let hit = cache.remove(i);
            let rope = hit.4.clone();
            cache.push(hit);
            return Ok(rope);
        }
        let rope = Rope::new(head_dim, theta, 0, seq_len, dev)?;
        if cache.len() >= CACHED_TABLES {
            cache.remove(0);
        }
        cache.push((
            dev.clone(),
            head_dim,
            theta.to_bits(),
            seq_len,
            rope.clone(),
        ));
        Ok(rope)
    }

    /// Tables for `seq_len` positions starting at `start`.
    pub fn new(
        head_dim: usize,
        theta: f64,
        start: usize,
        seq_len: usize,
        dev: &Device,
    ) -> Result<Self> {
        let positions: Vec<usize> = (start..start + seq_len).collect();
        Self::at(head_dim, theta, &positions, dev)
    }

    /// Tables for the given positions, in their order (row i rotates by position `positions[i]`): a
    /// speculative draft tree's nodes sit at the round's start plus their depth.
    pub fn at(head_dim: usize, theta: f64, positions: &[usize], dev: &Device) -> Result<Self> {
        let (half, seq_len) = (head_dim / 2, positions.len());
        let mut cos = Vec::with_capacity(seq_len * half);
        let mut sin = Vec::with_capacity(seq_len * half);
        for &t in positions {
            for i in 0..half {
                // Meta computes the frequencies in f32; the angle is rounded to f32 likewise.
                let freq = (1.0 / theta.powf((2 * i) as f64 / head_dim as f64)) as f32;
                let ang = (t as f32 * freq) as f64;
                cos.push(ang.cos() as f32);
                sin.push(ang.sin() as f32);
            }
        }
        Ok(Rope {
            cos: Tensor::from_vec(cos, (seq_len, half), dev)?,
            sin: Tensor::from_vec(sin, (seq_len, half), dev)?,
        })
    }

    /// The cos and sin tables [T, head_dim/2] (f32).
    pub fn tables(&self) -> (&Tensor, &Tensor) {
        (&self.cos, &self.sin)
    }

    /// Rotates x [B, T, n_heads, head_dim] (computed in f32, returned in x's dtype): the fused kernel
    /// where `k` ([`crate::kernels::Kernels::fuse`]) says so, else [`Rope::apply_plain`].
    pub fn apply(&self, k: crate::kernels::Kernels, x: &Tensor) -> Result<Tensor> {
        if k.fuse(x.device(), x.dtype()) {
            return crate::kernels::rope(x, &self.cos, &self.sin);
        }
        self.apply_plain(x)
    }

    /// The rotation as plain candle ops.
    pub fn apply_plain(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, h, d) = x.dims4()?;
        let xf = x.to_dtype(DType::F32)?.reshape((b, t, h, d / 2, 2))?;
        let x0 = xf.narrow(D::Minus1, 0, 1)?;
        let x1 = xf.narrow(D::Minus1, 1, 1)?;
        let cos = self.cos.reshape((1, t, 1, d / 2, 1))?;
        let sin = self.sin.reshape((1, t, 1, d / 2, 1))?;
        let r0 = (x0.broadcast_mul(&cos)? - x1.broadcast_mul(&sin)?)?;
        let r1 = (x0.broadcast_mul(&sin)? + x1.broadcast_mul(&cos)?)?;
        Tensor::cat(&[r0, r1], D::Minus1)?
            .reshape((b, t, h, d))?
            .to_dtype(x.dtype())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    #[test]
    fn rotates_interleaved_pairs() -> Result<()> {
        let dev = Device::Cpu;
        // one head of dim 4 at position 1: pair 0 rotates by 1 rad, pair 1 by θ^(-1/2) = 0.01 rad
        let rope = Rope::new(4, 1e4, 0, 2, &dev)?;
        let x = Tensor::from_vec(vec![0f32, 0., 0., 0., 1., 0., 1., 0.], (1, 2, 1, 4), &dev)?;
        let y = rope
            .apply(crate::kernels::Kernels::default(), &x)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let want = [1f32.cos(), 1f32.sin(), 0.01f32.cos(), 0.01f32.sin()];
        for (a, b) in y[4..].iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{y:?}");
        }
        Ok(())
    }

    /// The fused kernel (kernels/rope.rs) against this plain path, forward and backward.
    #[test]
    fn fused_rope_matches_the_plain_path_forward_and_backward_on_cpu() -> Result<()> {
        let dev = Device::Cpu;
        let (t, h, d) = (7, 3, 8);
        let table = Rope::new(d, 1e4, 0, t, &dev)?;
        let (cos, sin) = table.tables();
        for (dt, tol) in [(DType::F32, 1e-6f32), (DType::BF16, 1e-2)] {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, t, h, d), &dev)?.to_dtype(dt)?)?;
            let dy = Tensor::randn(0f32, 1.0, (2, t, h, d), &dev)?;
            let a = crate::kernels::rope::rope(x.as_tensor(), cos, sin)?;
            let b = table.apply_plain(x.as_tensor())?;
            let diff = |a: &Tensor, b: &Tensor| -> Result<f32> {
                (a.to_dtype(DType::F32)? - b.to_dtype(DType::F32)?)?
                    .abs()?
                    .max_all()?
                    .to_scalar::<f32>()
            };
            assert!(diff(&a, &b)? <= tol, "{dt:?} forward");
            let ga = (a.to_dtype(DType::F32)? * &dy)?.sum_all()?.backward()?;
            let gb = (b.to_dtype(DType::F32)? * &dy)?.sum_all()?.backward()?;
            let (p, q) = (
                ga.get(x.as_tensor()).unwrap(),
                gb.get(x.as_tensor()).unwrap(),
            );
            assert!(diff(p, q)? <= tol * 4.0, "{dt:?} backward {}", diff(p, q)?);
        }
        Ok(())
    }
}
