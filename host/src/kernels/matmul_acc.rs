//! acc ← acc + a·b (or a·bᵀ) as ONE matrix product that reads and writes acc in place: LoRA's adapter
//! term y = x·Wᵀ + (x·Aᵀ)·(s·B)ᵀ and its input gradient dx = dy·W + (dy·s·B)·A. On CUDA (bf16) the
//! product's epilogue adds into acc (cuBLAS with β = 1), where the plain path writes the [N, out]
//! low-rank product and then reads it again for a separate sum — two extra passes over an activation-
//! sized tensor per adapter, forward and backward. Elsewhere (CPU, f32) the plain sum.

use candle_core::{Result, Tensor};

/// `acc + a·bᵀ` when `b_transposed` (b is [out, k], a weight's layout), else `acc + a·b` (b is
/// [k, out]); a is [n, k], acc [n, out]. `acc` is consumed: on the fused path it is written in place,
/// so it must be a tensor nothing else holds (a fresh matmul output).
pub fn matmul_acc(
    k: super::Kernels,
    acc: Tensor,
    a: &Tensor,
    b: &Tensor,
    b_transposed: bool,
) -> Result<Tensor> {
    #[cfg(not(feature = "cuda"))]
    let _ = k; // the fused path exists only in CUDA builds
    #[cfg(feature = "cuda")]
    if k.fuse(acc.device(), acc.dtype())
        && acc.dtype() == candle_core::DType::BF16
        && acc.is_contiguous()
        && a.is_contiguous()
        && b.is_contiguous()
    {
        acc.inplace_op3(a, b, &cuda::MatmulAcc { b_transposed })?;
        return Ok(acc);
    }
    let b = if b_transposed { b.t()? } else { b.clone() };
    acc + a.matmul(&b)?
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::cuda_backend::cudarc::cublas::{sys, Gemm, GemmConfig};
    use candle_core::{bail, CpuStorage, CudaStorage, InplaceOp3, Layout, Result};

    pub struct MatmulAcc {
        pub b_transposed: bool,
    }

    impl InplaceOp3 for MatmulAcc {
        fn name(&self) -> &'static str {
            "wmtp-matmul-acc"
        }

        fn cpu_fwd(
            &self,
            _: &mut CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
            _: &CpuStorage,
            _: &Layout,
        ) -> Result<()> {
            bail!("matmul_acc: the in-place product runs on CUDA only")
        }

        fn cuda_fwd(
            &self,
            acc: &mut CudaStorage,
            la: &Layout,
            a: &CudaStorage,
            l1: &Layout,
            b: &CudaStorage,
            l2: &Layout,
        ) -> Result<()> {
            let (n, out) = la.shape().dims2()?;
            let (n1, k) = l1.shape().dims2()?;
            let (b0, b1) = l2.shape().dims2()?;
            let (bk, bout) = if self.b_transposed {
                (b1, b0)
            } else {
                (b0, b1)
            };
            if n1 != n || bk != k || bout != out {
                bail!(
                    "matmul_acc: shapes {:?} += {:?}·{:?}{} do not fit",
                    la.shape().dims(),
                    l1.shape().dims(),
                    l2.shape().dims(),
                    if self.b_transposed { "ᵀ" } else { "" }
                );
            }
            let blas = acc.device.cublas_handle();
            let av = super::super::cuda::view::<half::bf16>(a, l1)?;
            let bv = super::super::cuda::view::<half::bf16>(b, l2)?;
            let o = la.start_offset();
            let mut cv = acc
                .as_cuda_slice_mut::<half::bf16>()?
                .slice_mut(o..o + n * out);
            // row-major C[n, out] is column-major Cᵀ[out, n]: Cᵀ += op(B)ᵀ-as-stored · Aᵀ
            let (transa, lda) = if self.b_transposed {
                (sys::cublasOperation_t::CUBLAS_OP_T, k as i32)
            } else {
                (sys::cublasOperation_t::CUBLAS_OP_N, out as i32)
            };
            let cfg = GemmConfig {
                transa,
                transb: sys::cublasOperation_t::CUBLAS_OP_N,
                m: out as i32,
                n: n as i32,
                k: k as i32,
                alpha: half::bf16::ONE,
                lda,
                ldb: k as i32,
                beta: half::bf16::ONE,
                ldc: out as i32,
            };
            // SAFETY: the three views cover exactly the extents the configuration reads and writes
            // (checked shapes, contiguous layouts), all on the device's stream.
            unsafe { blas.gemm(cfg, &bv, &av, &mut cv) }
                .map_err(|e| candle_core::Error::Cuda(Box::new(e)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Kernels;
    use candle_core::{DType, Device};

    #[test]
    fn plain_path_adds_the_product() -> Result<()> {
        let dev = Device::Cpu;
        let acc = Tensor::randn(0f32, 1.0, (5, 3), &dev)?;
        let a = Tensor::randn(0f32, 1.0, (5, 2), &dev)?;
        let bt = Tensor::randn(0f32, 1.0, (3, 2), &dev)?;
        let want = (&acc + a.matmul(&bt.t()?)?)?;
        let got = matmul_acc(Kernels::Fused, acc.clone(), &a, &bt, true)?;
        let got2 = matmul_acc(Kernels::Fused, acc, &a, &bt.t()?.contiguous()?, false)?;
        for g in [got, got2] {
            let d = (g - &want)?.abs()?.max_all()?.to_dtype(DType::F32)?;
            assert!(d.to_scalar::<f32>()? < 1e-6);
        }
        Ok(())
    }
}
