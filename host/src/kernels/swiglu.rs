//! Fused SwiGLU gate: y = silu(a)·b = a·σ(a)·b in one kernel (f32 maths, one rounding). Backward:
//! da = dy·b·σ(a)·(1 + a·(1 − σ(a))), db = dy·silu(a).

use super::cpu;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

struct SwiGluOp;

/// silu(a)·b for a, b of one shape.
pub fn swiglu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.dims() != b.dims() {
        candle_core::bail!("swiglu: shapes {:?} and {:?} differ", a.dims(), b.dims());
    }
    a.contiguous()?.apply_op2(&b.contiguous()?, SwiGluOp)
}

/// silu(a)·b through the fused op where [`super::Kernels::fuse`] says so, else plain candle ops.
pub fn gate(k: super::Kernels, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if k.fuse(a.device(), a.dtype()) {
        return swiglu(a, b);
    }
    swiglu_plain(a, b)
}

/// The plain-candle gate the fused op must equal (the model's own path).
pub fn swiglu_plain(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    candle_nn::ops::silu(a)? * b
}

/// (dL/da, dL/db) of silu(a)·b for upstream gradient dy, with no autograd: the fused kernel where
/// [`super::Kernels::fuse`] says so, else candle ops (f32 maths).
pub fn swiglu_backward(
    k: super::Kernels,
    a: &Tensor,
    b: &Tensor,
    dy: &Tensor,
) -> Result<(Tensor, Tensor)> {
    #[cfg(not(feature = "cuda"))]
    let _ = k; // the fused path exists only in CUDA builds
    let dy = dy.to_dtype(a.dtype())?.contiguous()?;
    #[cfg(feature = "cuda")]
    if k.fuse(a.device(), a.dtype()) {
        let (da, db) = cuda_bwd(a, b, &dy)?;
        return Ok((da.expect("da"), db.expect("db")));
    }
    plain_bwd(a, b, &dy)
}

fn plain_bwd(a: &Tensor, b: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    let dt = a.dtype();
    let (af, bf, gf) = (
        a.to_dtype(DType::F32)?,
        b.to_dtype(DType::F32)?,
        dy.to_dtype(DType::F32)?,
    );
    let s = candle_nn::ops::sigmoid(&af)?;
    let dsilu = (&s * ((&af * (1.0 - &s)?)? + 1.0)?)?;
    let da = (&gf * &bf)?.mul(&dsilu)?.to_dtype(dt)?;
    let db = (gf * (af * s)?)?.to_dtype(dt)?;
    Ok((da, db))
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl CustomOp2 for SwiGluOp {
    fn name(&self) -> &'static str {
        "wmtp-swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dt = s1.dtype();
        let (a, b) = (cpu::f32_vec(s1, l1)?, cpu::f32_vec(s2, l2)?);
        let y = a
            .iter()
            .zip(&b)
            .map(|(&a, &b)| cpu::round(a * sigmoid(a) * b, dt))
            .collect();
        Ok((cpu::storage(y, dt)?, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use super::cuda::{by_dtype, elems8_cfg, launch, suffix, view};
        let dev = &s1.device;
        let n = l1.shape().elem_count();
        let name = format!("swiglu_fwd_{}", suffix(s1.dtype())?);
        let n_i = n as i64;
        let out = by_dtype!(s1.dtype(), T => {
            let (a, b) = (view::<T>(s1, l1)?, view::<T>(s2, l2)?);
            let y = unsafe { dev.alloc::<T>(n) }?;
            launch!(dev, name, elems8_cfg(n); &a, &b, &y, &n_i);
            candle_core::CudaStorage::wrap_cuda_slice(y, dev.clone())
        });
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        #[cfg(feature = "cuda")]
        if a.device().is_cuda() {
            return cuda_bwd(a, b, &dy);
        }
        let (da, db) = plain_bwd(a, b, &dy)?;
        Ok((Some(da), Some(db)))
    }
}

#[cfg(feature = "cuda")]
fn cuda_bwd(a: &Tensor, b: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
    use super::cuda::{by_dtype, elems8_cfg, hold, launch, suffix, view, wrap};
    let (a, b) = (a.contiguous()?, b.contiguous()?);
    let (ha, hb, hd) = (hold(&a), hold(&b), hold(dy));
    let ((sa, la), (sb, lb), (sd, ld)) = (ha.cuda()?, hb.cuda()?, hd.cuda()?);
    let dev = &sa.device;
    let n = la.shape().elem_count();
    let name = format!("swiglu_bwd_{}", suffix(a.dtype())?);
    let n_i = n as i64;
    let (da, db) = by_dtype!(a.dtype(), T => {
        let (av, bv, dv) = (view::<T>(sa, la)?, view::<T>(sb, lb)?, view::<T>(sd, ld)?);
        let da = unsafe { dev.alloc::<T>(n) }?;
        let db = unsafe { dev.alloc::<T>(n) }?;
        launch!(dev, name, elems8_cfg(n); &dv, &av, &bv, &da, &db, &n_i);
        (wrap(da, dev, la.shape().clone()), wrap(db, dev, la.shape().clone()))
    });
    Ok((Some(da), Some(db)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn fused_swiglu_matches_the_plain_path_forward_and_backward_on_cpu() -> Result<()> {
        let dev = Device::Cpu;
        for (dt, tol) in [(DType::F32, 1e-5f32), (DType::BF16, 3e-2)] {
            let a = Var::from_tensor(&Tensor::randn(0f32, 2.0, (4, 33), &dev)?.to_dtype(dt)?)?;
            let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, (4, 33), &dev)?.to_dtype(dt)?)?;
            let dy = Tensor::randn(0f32, 1.0, (4, 33), &dev)?;
            let f = swiglu(a.as_tensor(), b.as_tensor())?;
            let p = swiglu_plain(a.as_tensor(), b.as_tensor())?;
            let diff = super::cpu::max_abs_diff;
            assert!(
                diff(&f, &p)? <= tol * 4.0,
                "{dt:?} forward {}",
                diff(&f, &p)?
            );
            let gf = (f.to_dtype(DType::F32)? * &dy)?.sum_all()?.backward()?;
            let gp = (p.to_dtype(DType::F32)? * &dy)?.sum_all()?.backward()?;
            for v in [a.as_tensor(), b.as_tensor()] {
                let d = diff(gf.get(v).unwrap(), gp.get(v).unwrap())?;
                assert!(d <= tol * 8.0, "{dt:?} backward {d}");
            }
        }
        Ok(())
    }
}
