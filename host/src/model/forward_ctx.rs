//! `ForwardCtx`: what a forward pass needs besides inputs — training or evaluation, and the seeded
//! randomness for dropout (so a run, and a resumed run, draw the same masks).

use crate::kernels::dropout::{dropout_mask, stream_key};
use crate::kernels::Kernels;
use candle_core::{Result, Tensor};
use std::sync::atomic::{AtomicU64, Ordering};

/// Forward-pass settings: `train` turns dropout on; masks come from `seed` and a per-call counter.
#[derive(Debug)]
pub struct ForwardCtx {
    /// Training mode (dropout active).
    pub train: bool,
    seed: u64,
    calls: AtomicU64,
}

impl ForwardCtx {
    /// Evaluation: no dropout.
    pub fn eval() -> Self {
        ForwardCtx {
            train: false,
            seed: 0,
            calls: AtomicU64::new(0),
        }
    }

    /// Training with dropout masks drawn deterministically from `seed`.
    pub fn train(seed: u64) -> Self {
        ForwardCtx {
            train: true,
            seed,
            calls: AtomicU64::new(0),
        }
    }

    /// Inverted dropout: zeroes each element with probability `p`, scales the rest by 1/(1−p).
    /// Identity in evaluation or when p = 0.
    /// The mask is drawn by a kernel on the device where `k` says so ([`Kernels::fuse`]; the same
    /// numbers either way).
    pub fn dropout(&self, k: Kernels, x: &Tensor, p: f32) -> Result<Tensor> {
        if p >= 1.0 && self.train {
            return x.zeros_like();
        }
        match self.dropout_mask(k, x, p)? {
            Some(mask) => x.mul(&mask),
            None => Ok(x.clone()),
        }
    }

    /// The mask [`ForwardCtx::dropout`] multiplies `x` by (0 or 1/(1−p), in x's dtype), drawing the same
    /// numbers; None in evaluation or when p ≤ 0 (identity).
    pub fn dropout_mask(&self, k: Kernels, x: &Tensor, p: f32) -> Result<Option<Tensor>> {
        if !self.train || p <= 0.0 {
            return Ok(None);
        }
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        if p >= 1.0 {
            return Ok(Some(x.zeros_like()?));
        }
        // drawn where x lives (a kernel on CUDA): no host loop, no copy per LoRA target
        Ok(Some(dropout_mask(
            k,
            x.shape(),
            x.dtype(),
            x.device(),
            stream_key(self.seed, call),
            p,
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn dropout_is_seeded_and_unbiased() -> Result<()> {
        let x = Tensor::ones((64, 64), candle_core::DType::F32, &Device::Cpu)?;
        let a = ForwardCtx::train(7).dropout(Kernels::default(), &x, 0.25)?;
        let b = ForwardCtx::train(7).dropout(Kernels::default(), &x, 0.25)?;
        assert_eq!(a.to_vec2::<f32>()?, b.to_vec2::<f32>()?);
        let mean = a.mean_all()?.to_scalar::<f32>()?;
        assert!((mean - 1.0).abs() < 0.05, "mean {mean}");
        let e = ForwardCtx::eval().dropout(Kernels::default(), &x, 0.25)?;
        assert_eq!(e.to_vec2::<f32>()?, x.to_vec2::<f32>()?);
        Ok(())
    }
}
