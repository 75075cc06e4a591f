//! CPU helpers of the fused ops' reference implementations: storage ↔ f32 vectors and rounding to the
//! compute dtype (so the CPU twin rounds where the CUDA kernel does).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Layout, Result};

/// The elements of `s` under layout `l`, in order, as f32.
pub fn f32_vec(s: &CpuStorage, l: &Layout) -> Result<Vec<f32>> {
    let c = s.to_dtype(l, DType::F32)?;
    Ok(c.as_slice::<f32>()?.to_vec())
}

/// A contiguous storage of `dtype` holding `v`.
pub fn storage(v: Vec<f32>, dtype: DType) -> Result<CpuStorage> {
    let n = v.len();
    let s = CpuStorage::F32(v);
    if dtype == DType::F32 {
        return Ok(s);
    }
    s.to_dtype(&Layout::contiguous(n), dtype)
}

/// x rounded to `dtype` and back (round-to-nearest-even for bf16; identity for f32).
pub fn round(x: f32, dtype: DType) -> f32 {
    match dtype {
        DType::BF16 if x.is_finite() => {
            let b = x.to_bits();
            let r = ((b >> 16) & 1) + 0x7fff;
            f32::from_bits(b.wrapping_add(r) & 0xffff_0000)
        }
        _ => x,
    }
}

/// max |a − b| over all elements, compared in f32 (the kernel tests' measure).
#[cfg(test)]
pub fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> Result<f32> {
    (a.to_dtype(DType::F32)? - b.to_dtype(DType::F32)?)?
        .abs()?
        .max_all()?
        .to_scalar()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounding_matches_candle() -> Result<()> {
        // exact ties (1 + 2⁻⁸ rounds to even), a value just above a tie, ordinary values
        let xs = [
            1.0f32,
            1.0 + 1.0 / 256.0,
            1.0 + 3.0 / 512.0,
            -2.71,
            1e-3,
            65504.0,
            0.1,
        ];
        let t = candle_core::Tensor::new(&xs[..], &candle_core::Device::Cpu)?;
        let r: Vec<f32> = t.to_dtype(DType::BF16)?.to_dtype(DType::F32)?.to_vec1()?;
        for (x, want) in xs.iter().zip(r) {
            assert_eq!(round(*x, DType::BF16), want, "{x}");
        }
        Ok(())
    }
}
