//! Fused rotary embedding (Meta's interleaved pairs) in one kernel: for x [B, T, H, D] and tables
//! cos/sin [T, D/2] (f32), (x0, x1) → (x0·c − x1·s, x0·s + x1·c), computed in f32 and rounded once.
//! The backward is the same rotation by −θ (the op with the sine negated).

use super::cpu;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

struct RopeOp {
    cos: Tensor,
    sin: Tensor,
    /// +1: rotate by θ; −1: by −θ.
    sign: f32,
}

/// Rotates x [B, T, H, D] by the angles of `cos`/`sin` [T, D/2] (f32, on x's device).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    rotate(x, cos, sin, 1.0)
}

/// dL/dx of [`rope`] for upstream gradient dy: the rotation by −θ (fused op, which runs on both devices).
pub fn rope_backward(dy: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    rotate(dy, cos, sin, -1.0)
}

fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor, sign: f32) -> Result<Tensor> {
    let (_, t, _, d) = x.dims4()?;
    if cos.dims() != [t, d / 2] || sin.dims() != [t, d / 2] || d % 2 != 0 {
        candle_core::bail!("rope: tables {:?} do not fit x {:?}", cos.dims(), x.dims());
    }
    x.contiguous()?.apply_op1(RopeOp {
        cos: cos.to_dtype(DType::F32)?.contiguous()?,
        sin: sin.to_dtype(DType::F32)?.contiguous()?,
        sign,
    })
}

impl CustomOp1 for RopeOp {
    fn name(&self) -> &'static str {
        "wmtp-rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dt = s.dtype();
        let (_, t, h, d) = l.shape().dims4()?;
        let x = cpu::f32_vec(s, l)?;
        let cos: Vec<f32> = self.cos.flatten_all()?.to_vec1()?;
        let sin: Vec<f32> = self.sin.flatten_all()?.to_vec1()?;
        let half = d / 2;
        let mut y = vec![0f32; x.len()];
        for i in 0..x.len() / 2 {
            let p = i % half;
            let ti = (i / half / h) % t;
            let (c, sn) = (cos[ti * half + p], self.sign * sin[ti * half + p]);
            let (x0, x1) = (x[2 * i], x[2 * i + 1]);
            y[2 * i] = cpu::round(x0 * c - x1 * sn, dt);
            y[2 * i + 1] = cpu::round(x0 * sn + x1 * c, dt);
        }
        Ok((cpu::storage(y, dt)?, l.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use super::cuda::{by_dtype, elems8_cfg, hold, launch, suffix, view};
        let dev = &s.device;
        let (_, t, h, d) = l.shape().dims4()?;
        let n = l.shape().elem_count();
        let (hc, hs) = (hold(&self.cos), hold(&self.sin));
        let ((sc, lc), (ss, ls)) = (hc.cuda()?, hs.cuda()?);
        let (cv, sv) = (view::<f32>(sc, lc)?, view::<f32>(ss, ls)?);
        let name = format!("rope_{}", suffix(s.dtype())?);
        let (pairs, t_i, h_i, half, sign) = (
            (n / 2) as i64,
            t as i32,
            h as i32,
            (d / 2) as i32,
            self.sign,
        );
        let out = by_dtype!(s.dtype(), T => {
            let x = view::<T>(s, l)?;
            let y = unsafe { dev.alloc::<T>(n) }?;
            launch!(dev, name, elems8_cfg(n); &x, &cv, &sv, &y, &pairs, &t_i, &h_i, &half, &sign);
            candle_core::CudaStorage::wrap_cuda_slice(y, dev.clone())
        });
        Ok((out, l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(rotate(dy, &self.cos, &self.sin, -self.sign)?))
    }
}
