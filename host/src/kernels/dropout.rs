//! Dropout masks drawn where the tensor lives: mask[i] = 0 when u(key, i) < p, else 1/(1−p), with
//! u(key, i) ∈ [0, 1) the top 24 bits of SplitMix64's finaliser applied to key + (i+1)·φ (φ =
//! 0x9E3779B97F4A7C15). A counter-based hash rather than a stream generator, so the mask depends only on
//! (key, i): a CUDA kernel (`dropout_mask_*` in kernels/fused.cu) and this file's CPU loop draw the same
//! bits, and a resumed run draws the masks the interrupted one would have.
//!
//! Before this, masks were drawn on the host and uploaded: on the GPU every LoRA target of every block
//! waited for a host loop and a synchronous copy (most of a SmolLM2 step's 0.63 s).

use candle_core::{DType, Device, Result, Shape, Tensor};

/// SplitMix64's golden-ratio increment φ.
const PHI: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's finaliser: a bijective 64-bit mix.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The key of the `call`-th mask of a run seeded `seed`: both mixed, so that keys of different calls are
/// unrelated (keys one φ apart would give masks shifted by one element).
pub fn stream_key(seed: u64, call: u64) -> u64 {
    mix(seed ^ mix(call.wrapping_add(PHI)))
}

/// u(key, i) ∈ [0, 1): the uniform number element `i` of the mask under `key` compares with p.
pub fn uniform(key: u64, i: u64) -> f32 {
    (mix(key.wrapping_add(i.wrapping_add(1).wrapping_mul(PHI))) >> 40) as f32 * (1.0 / 16_777_216.0)
}

/// The inverted-dropout mask of `shape` in `dtype` on `dev`: 0 with probability `p` (0 ≤ p < 1), else
/// 1/(1−p). On CUDA (f32/bf16, fused kernels on) one kernel writes it on the device; elsewhere it is
/// computed on the CPU (and copied to `dev`), with the same values.
pub fn dropout_mask(
    k: super::Kernels,
    shape: impl Into<Shape>,
    dtype: DType,
    dev: &Device,
    key: u64,
    p: f32,
) -> Result<Tensor> {
    #[cfg(not(feature = "cuda"))]
    let _ = k; // the fused path exists only in CUDA builds
    let shape = shape.into();
    if !(0.0..1.0).contains(&p) {
        candle_core::bail!("dropout probability must be in [0, 1), got {p}");
    }
    let keep = 1.0 / (1.0 - p);
    #[cfg(feature = "cuda")]
    if k.fuse(dev, dtype) {
        return cuda(shape, dtype, dev, key, p, keep);
    }
    let n = shape.elem_count() as u64;
    let mask: Vec<f32> = (0..n)
        .map(|i| if uniform(key, i) < p { 0.0 } else { keep })
        .collect();
    Tensor::from_vec(mask, shape, &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(dev)
}

#[cfg(feature = "cuda")]
fn cuda(shape: Shape, dtype: DType, dev: &Device, key: u64, p: f32, keep: f32) -> Result<Tensor> {
    use super::cuda::{by_dtype, elems_cfg, launch, suffix, wrap};
    let Device::Cuda(dev) = dev else {
        candle_core::bail!("dropout_mask: not a CUDA device");
    };
    let n = shape.elem_count();
    let name = format!("dropout_mask_{}", suffix(dtype)?);
    let n_i = n as i64;
    Ok(by_dtype!(dtype, T => {
        // every element is written by the kernel
        let out = unsafe { dev.alloc::<T>(n) }?;
        launch!(dev, name, elems_cfg(n); &out, &n_i, &key, &p, &keep);
        wrap(out, dev, shape)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Kernels;

    #[test]
    fn uniform_is_spread_over_the_unit_interval() {
        let n = 100_000u64;
        let u: Vec<f32> = (0..n).map(|i| uniform(12345, i)).collect();
        assert!(u.iter().all(|&x| (0.0..1.0).contains(&x)));
        let mean = u.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.005, "mean {mean}");
        // ten equal bins each hold about a tenth
        let mut bins = [0usize; 10];
        for &x in &u {
            bins[(x * 10.0) as usize] += 1;
        }
        assert!(
            bins.iter()
                .all(|&b| (b as f64 / n as f64 - 0.1).abs() < 0.005),
            "{bins:?}"
        );
        // consecutive calls give unrelated masks, not shifted copies
        let (k1, k2) = (stream_key(0, 1), stream_key(0, 2));
        for shift in 0..3 {
            let same = (0..1000)
                .filter(|&i| (uniform(k1, i + shift) < 0.5) == (uniform(k2, i) < 0.5))
                .count();
            assert!(
                (430..570).contains(&same),
                "{same} of 1000 agree at shift {shift}"
            );
        }
    }

    #[test]
    fn mask_keeps_the_expected_fraction_and_scale() -> Result<()> {
        let m = dropout_mask(
            Kernels::Fused,
            (200, 300),
            DType::F32,
            &Device::Cpu,
            7,
            0.25,
        )?;
        let v = m.flatten_all()?.to_vec1::<f32>()?;
        let zeros = v.iter().filter(|&&x| x == 0.0).count() as f64 / v.len() as f64;
        assert!((zeros - 0.25).abs() < 0.01, "dropped {zeros}");
        assert!(v.iter().all(|&x| x == 0.0 || (x - 1.0 / 0.75).abs() < 1e-6));
        let again = dropout_mask(
            Kernels::Fused,
            (200, 300),
            DType::F32,
            &Device::Cpu,
            7,
            0.25,
        )?;
        assert_eq!(v, again.flatten_all()?.to_vec1::<f32>()?);
        let bf = dropout_mask(
            Kernels::Fused,
            (200, 300),
            DType::BF16,
            &Device::Cpu,
            7,
            0.25,
        )?;
        let bf = bf.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        assert!(v.iter().zip(&bf).all(|(a, b)| (*a == 0.0) == (*b == 0.0)));
        assert!(dropout_mask(Kernels::Fused, 4, DType::F32, &Device::Cpu, 7, 1.0).is_err());
        Ok(())
    }
}
