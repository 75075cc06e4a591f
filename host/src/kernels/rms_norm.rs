//! Fused RMSNorm: y = bf(bf(x·r)·w), r = 1/√(mean(x²) + ε), over the last dimension, in one kernel
//! (the plain path is eight elementwise ops and two f32 copies). Backward (recomputing r):
//! n = x·r, g = dy·w, dx = r·(g − n·mean(g·n)); dw = Σ_rows dy·bf(n), computed only when w is trained.

use super::cpu;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, D};

struct RmsNormOp {
    eps: f32,
}

/// RMSNorm of x [..., dim] with gain w [dim] (cast to x's dtype); differentiable in x and w.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let w = w.to_dtype(x.dtype())?;
    x.contiguous()?
        .apply_op2(&w.contiguous()?, RmsNormOp { eps: eps as f32 })
}

/// The plain-candle RMSNorm the fused op must equal (the model's own path).
pub fn rms_norm_plain(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let xf = x.to_dtype(DType::F32)?;
    let ms = xf.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = xf
        .broadcast_div(&(ms + eps)?.sqrt()?)?
        .to_dtype(x.dtype())?;
    normed.broadcast_mul(&w.to_dtype(x.dtype())?)
}

/// dL/dx (and dL/dw when `want_dw`) of RMSNorm for upstream gradient dy, with no autograd: the fused
/// kernel where [`super::Kernels::fuse`] says so, else candle ops (f32 maths).
pub fn rms_norm_backward(
    k: super::Kernels,
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    eps: f64,
    want_dw: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    rms_norm_backward_add(k, x, w, dy, eps, want_dw, None)
}

/// [`rms_norm_backward`] with `resid` (the gradient reaching x around the norm, through the residual
/// connection) added to dL/dx: in the kernel's epilogue on the GPU, one rounding, no separate pass.
pub fn rms_norm_backward_add(
    k: super::Kernels,
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    eps: f64,
    want_dw: bool,
    resid: Option<&Tensor>,
) -> Result<(Tensor, Option<Tensor>)> {
    #[cfg(not(feature = "cuda"))]
    let _ = k; // the fused path exists only in CUDA builds
    let op = RmsNormOp { eps: eps as f32 };
    let w = w.detach().to_dtype(x.dtype())?;
    let dy = dy.to_dtype(x.dtype())?.contiguous()?;
    #[cfg(feature = "cuda")]
    if k.fuse(x.device(), x.dtype()) {
        let resid = match resid {
            Some(r) => Some(r.to_dtype(x.dtype())?.contiguous()?),
            None => None,
        };
        let (dx, dw) = op.cuda_bwd(x, &w, &dy, want_dw, resid.as_ref())?;
        let dx = dx.ok_or_else(|| candle_core::Error::Msg("rms_norm_backward: no dx".into()))?;
        return Ok((dx, dw));
    }
    let (dx, dw) = op.plain_bwd(x, &w, &dy, want_dw)?;
    match resid {
        Some(r) => Ok(((dx + r.to_dtype(x.dtype())?)?, dw)),
        None => Ok((dx, dw)),
    }
}

impl RmsNormOp {
    fn plain_bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        want_dw: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let dt = x.dtype();
        let xf = x.to_dtype(DType::F32)?;
        let r = ((xf.sqr()?.mean_keepdim(D::Minus1)? + self.eps as f64)?.sqrt()?).recip()?;
        let n = xf.broadcast_mul(&r)?;
        let g = dy
            .to_dtype(DType::F32)?
            .broadcast_mul(&w.to_dtype(DType::F32)?)?;
        let dot = (&g * &n)?.mean_keepdim(D::Minus1)?;
        let dx = (g - n.broadcast_mul(&dot)?)?
            .broadcast_mul(&r)?
            .to_dtype(dt)?;
        let dw = if want_dw {
            let dim = w.elem_count();
            let nb = n.to_dtype(dt)?.to_dtype(DType::F32)?;
            let p = (dy.to_dtype(DType::F32)? * nb)?.reshape(((), dim))?;
            Some(p.sum(0)?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

impl CustomOp2 for RmsNormOp {
    fn name(&self) -> &'static str {
        "wmtp-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dt = s1.dtype();
        let (x, w) = (cpu::f32_vec(s1, l1)?, cpu::f32_vec(s2, l2)?);
        let dim = w.len();
        let mut y = vec![0f32; x.len()];
        for (xr, yr) in x.chunks(dim).zip(y.chunks_mut(dim)) {
            let ss: f32 = xr.iter().map(|v| v * v).sum();
            let r = 1.0 / (ss / dim as f32 + self.eps).sqrt();
            for ((yv, xv), wv) in yr.iter_mut().zip(xr).zip(&w) {
                *yv = cpu::round(cpu::round(xv * r, dt) * wv, dt);
            }
        }
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
        use super::cuda::{by_dtype, launch, rows_cfg, suffix, view};
        let dev = &s1.device;
        let dim = l2.shape().elem_count();
        let rows = l1.shape().elem_count() / dim;
        let name = format!("rmsnorm_fwd_{}", suffix(s1.dtype())?);
        let (dim_i, eps) = (dim as i32, self.eps);
        let out = by_dtype!(s1.dtype(), T => {
            let (x, w) = (view::<T>(s1, l1)?, view::<T>(s2, l2)?);
            let y = unsafe { dev.alloc::<T>(rows * dim) }?;
            launch!(dev, name, rows_cfg(rows, 256, 0); &x, &w, &y, &dim_i, &eps);
            candle_core::CudaStorage::wrap_cuda_slice(y, dev.clone())
        });
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let want_dw = w.track_op();
        let dy = dy.contiguous()?;
        #[cfg(feature = "cuda")]
        if x.device().is_cuda() {
            let (dx, dw) = self.cuda_bwd(x, w, &dy, want_dw, None)?;
            return Ok((dx, dw.map(|g| g.to_dtype(w.dtype())).transpose()?));
        }
        let (dx, dw) = self.plain_bwd(x, w, &dy, want_dw)?;
        Ok((Some(dx), dw.map(|g| g.to_dtype(w.dtype())).transpose()?))
    }
}

#[cfg(feature = "cuda")]
impl RmsNormOp {
    fn cuda_bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        dy: &Tensor,
        want_dw: bool,
        resid: Option<&Tensor>,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        use super::cuda::{by_dtype, hold, launch, rows_cfg, suffix, view, wrap};
        use candle_core::cuda_backend::cudarc::driver::DevicePtr;
        let x = x.contiguous()?;
        let (hx, hw, hd) = (hold(&x), hold(w), hold(dy));
        let ((sx, lx), (sw, lw), (sd, ld)) = (hx.cuda()?, hw.cuda()?, hd.cuda()?);
        let dev = &sx.device;
        let hr = resid.map(hold);
        let rs = match &hr {
            Some(h) => {
                let (s, l) = h.cuda()?;
                if l.shape() != lx.shape() || s.dtype() != sx.dtype() {
                    candle_core::bail!(
                        "rms_norm_backward: the residual gradient differs from x in shape or dtype"
                    );
                }
                Some((s, l))
            }
            None => None,
        };
        let dim = lw.shape().elem_count();
        let rows = lx.shape().elem_count() / dim;
        // rows per block: one without dw; with dw about 1024 blocks, each adding its partial sums once per column
        let rpb_n = if want_dw {
            rows.div_ceil(1024).max(1)
        } else {
            1
        };
        let name = format!("rmsnorm_bwd_{}", suffix(x.dtype())?);
        let (rows_i, dim_i, eps, rpb) = (rows as i32, dim as i32, self.eps, rpb_n as i32);
        let dw = if want_dw {
            Some(dev.alloc_zeros::<f32>(dim)?)
        } else {
            None
        };
        let smem = if want_dw { dim as u32 * 4 } else { 0 };
        let cfg = rows_cfg(rows.div_ceil(rpb_n), 256, smem);
        let stream = dev.cuda_stream();
        let dx = by_dtype!(x.dtype(), T => {
            let (xv, wv, dv) = (view::<T>(sx, lx)?, view::<T>(sw, lw)?, view::<T>(sd, ld)?);
            let rv = rs.map(|(s, l)| view::<T>(s, l)).transpose()?;
            // the residual gradient's address, or null (the kernel then adds nothing)
            let rp: u64 = match &rv {
                Some(v) => v.device_ptr(&stream).0,
                None => 0,
            };
            let dx = unsafe { dev.alloc::<T>(rows * dim) }?;
            match &dw {
                Some(dwb) => {
                    launch!(dev, name, cfg, smem = smem; &dv, &xv, &wv, &rp, &dx, dwb, &rows_i, &dim_i, &eps, &rpb)
                }
                None => {
                    let null: u64 = 0;
                    launch!(dev, name, cfg; &dv, &xv, &wv, &rp, &dx, &null, &rows_i, &dim_i, &eps, &rpb)
                }
            }
            wrap(dx, dev, lx.shape().clone())
        });
        Ok((Some(dx), dw.map(|b| wrap(b, dev, dim))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn fused_rms_norm_matches_the_plain_path_forward_and_backward_on_cpu() -> Result<()> {
        let dev = Device::Cpu;
        for (dt, tol) in [(DType::F32, 1e-5f32), (DType::BF16, 3e-2)] {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 5, 64), &dev)?.to_dtype(dt)?)?;
            let w = Var::from_tensor(&(Tensor::randn(0f32, 0.2, 64, &dev)? + 1.0)?)?;
            let dy = Tensor::randn(0f32, 1.0, (3, 5, 64), &dev)?.to_dtype(dt)?;
            let a = rms_norm(x.as_tensor(), w.as_tensor(), 1e-5)?;
            let b = rms_norm_plain(x.as_tensor(), w.as_tensor(), 1e-5)?;
            assert!(
                super::cpu::max_abs_diff(&a, &b)? <= tol,
                "{dt:?} forward {}",
                super::cpu::max_abs_diff(&a, &b)?
            );
            let ga = (a.to_dtype(DType::F32)? * dy.to_dtype(DType::F32)?)?
                .sum_all()?
                .backward()?;
            let gb = (b.to_dtype(DType::F32)? * dy.to_dtype(DType::F32)?)?
                .sum_all()?
                .backward()?;
            for v in [x.as_tensor(), w.as_tensor()] {
                let (p, q) = (ga.get(v).unwrap(), gb.get(v).unwrap());
                let scale = q
                    .abs()?
                    .max_all()?
                    .to_dtype(DType::F32)?
                    .to_scalar::<f32>()?;
                let d = super::cpu::max_abs_diff(p, q)? / scale.max(1.0);
                assert!(d <= tol * 2.0, "{dt:?} grad {d}");
            }
        }
        Ok(())
    }
}
