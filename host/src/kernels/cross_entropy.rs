//! Fused per-row cross-entropy: CE[r] = logsumexp(z[r]) − z[r, target[r]] in f32, read straight from
//! bf16 (or f32) logits z [N, V] — no f32 copy of the logits, no [N, V] softmax kept. The log-sum-exp
//! of each row is kept for the backward, which writes dz = dCE[r]·(softmax(z[r]) − onehot(target[r]))
//! directly in the logits' dtype.

use super::cpu;
#[cfg(feature = "cuda")]
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Result, Shape, Tensor, D};
use std::sync::Mutex;

struct CrossEntropyOp {
    lse: Mutex<Option<Tensor>>,
}

/// CE of every row of logits z [N, V] against targets [N] (u32), f32 [N]; differentiable in z.
pub fn cross_entropy_rows(z: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (n, _) = z.dims2()?;
    if targets.dims() != [n] || targets.dtype() != DType::U32 {
        candle_core::bail!("cross_entropy_rows: targets must be u32 [{n}]");
    }
    z.contiguous()?.apply_op2(
        &targets.contiguous()?,
        CrossEntropyOp {
            lse: Mutex::new(None),
        },
    )
}

/// The plain-candle CE the fused op must equal (the engine's own path): f32 logits, max-shifted lse.
pub fn cross_entropy_rows_plain(z: &Tensor, targets: &Tensor) -> Result<Tensor> {
    Ok(plain(z, targets)?.0)
}

/// (CE [N], lse [N]) by candle ops (differentiable in z; the max shift carries no gradient).
fn plain(z: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor)> {
    let logits = z.to_dtype(DType::F32)?;
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let lse = (logits
        .broadcast_sub(&max)?
        .exp()?
        .sum_keepdim(D::Minus1)?
        .log()?
        + &max)?;
    let picked = logits.gather(&targets.unsqueeze(1)?, 1)?;
    Ok(((&lse - picked)?.squeeze(1)?, lse.squeeze(1)?))
}

/// Per-row CE [N] and log-sum-exp [N] (f32) of logits z [N, V] with no autograd: the fused kernel where
/// [`super::Kernels::fuse`] says so, else candle ops.
pub fn ce_forward(k: super::Kernels, z: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor)> {
    let z = z.detach();
    if k.fuse(z.device(), z.dtype()) {
        let op = CrossEntropyOp {
            lse: Mutex::new(None),
        };
        let ce = z
            .contiguous()?
            .apply_op2_no_bwd(&targets.contiguous()?, &op)?;
        return Ok((ce, op.kept()?));
    }
    plain(&z, targets)
}

/// dL/dz = coef[r]·(softmax(z[r]) − onehot(target[r])) in z's dtype, from [`ce_forward`]'s lse.
pub fn ce_backward(
    k: super::Kernels,
    z: &Tensor,
    targets: &Tensor,
    lse: &Tensor,
    coef: &Tensor,
) -> Result<Tensor> {
    #[cfg(not(feature = "cuda"))]
    let _ = k; // the fused path exists only in CUDA builds
    let coef = coef.to_dtype(DType::F32)?.contiguous()?;
    #[cfg(feature = "cuda")]
    if k.fuse(z.device(), z.dtype()) {
        return cuda_bwd(z, targets, lse, &coef);
    }
    let (n, _) = z.dims2()?;
    let p = z
        .to_dtype(DType::F32)?
        .broadcast_sub(&lse.unsqueeze(1)?)?
        .exp()?;
    let minus_one = Tensor::full(-1f32, (n, 1), z.device())?;
    p.scatter_add(&targets.unsqueeze(1)?, &minus_one, 1)?
        .broadcast_mul(&coef.unsqueeze(1)?)?
        .to_dtype(z.dtype())
}

impl CrossEntropyOp {
    fn keep(&self, lse: Tensor) {
        if let Ok(mut g) = self.lse.lock() {
            *g = Some(lse);
        }
    }

    fn kept(&self) -> Result<Tensor> {
        match self.lse.lock().ok().and_then(|g| g.clone()) {
            Some(t) => Ok(t),
            None => candle_core::bail!("cross_entropy_rows: backward before forward"),
        }
    }
}

impl CustomOp2 for CrossEntropyOp {
    fn name(&self) -> &'static str {
        "wmtp-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, v) = l1.shape().dims2()?;
        let z = cpu::f32_vec(s1, l1)?;
        let tg = match s2 {
            CpuStorage::U32(t) => &t[l2.start_offset()..l2.start_offset() + n],
            _ => candle_core::bail!("cross_entropy_rows: targets must be u32"),
        };
        let (mut ce, mut lse) = (vec![0f32; n], vec![0f32; n]);
        for r in 0..n {
            let row = &z[r * v..(r + 1) * v];
            let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let s: f32 = row.iter().map(|x| (x - m).exp()).sum();
            lse[r] = m + s.ln();
            let t = tg[r] as usize;
            if t >= v {
                candle_core::bail!("cross_entropy_rows: target {t} outside the vocabulary of {v}");
            }
            ce[r] = lse[r] - row[t];
        }
        self.keep(Tensor::from_vec(lse, n, &Device::Cpu)?);
        Ok((CpuStorage::F32(ce), Shape::from(n)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use super::cuda::{by_dtype, launch, rows_cfg, suffix, view, wrap};
        let dev = &s1.device;
        let (n, v) = l1.shape().dims2()?;
        let name = format!("ce_fwd_{}", suffix(s1.dtype())?);
        let tg = view::<u32>(s2, l2)?;
        let ce = unsafe { dev.alloc::<f32>(n) }?;
        let lse = unsafe { dev.alloc::<f32>(n) }?;
        let v_i = v as i32;
        by_dtype!(s1.dtype(), T => {
            let z = view::<T>(s1, l1)?;
            launch!(dev, name, rows_cfg(n, 512, 0); &z, &tg, &ce, &lse, &v_i);
        });
        self.keep(wrap(lse, dev, n));
        Ok((
            candle_core::CudaStorage::wrap_cuda_slice(ce, dev.clone()),
            Shape::from(n),
        ))
    }

    fn bwd(
        &self,
        z: &Tensor,
        targets: &Tensor,
        _ce: &Tensor,
        dce: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let lse = self.kept()?;
        let dce = dce.to_dtype(DType::F32)?.contiguous()?;
        #[cfg(feature = "cuda")]
        if z.device().is_cuda() {
            return Ok((Some(cuda_bwd(z, targets, &lse, &dce)?), None));
        }
        let (n, v) = z.dims2()?;
        let zf: Vec<f32> = z.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let (lse, c): (Vec<f32>, Vec<f32>) = (lse.to_vec1()?, dce.to_vec1()?);
        let tg: Vec<u32> = targets.to_vec1()?;
        let mut dz = vec![0f32; n * v];
        for r in 0..n {
            for j in 0..v {
                let p = (zf[r * v + j] - lse[r]).exp();
                let hot = if j == tg[r] as usize { 1.0 } else { 0.0 };
                dz[r * v + j] = c[r] * (p - hot);
            }
        }
        let dz = Tensor::from_vec(dz, (n, v), z.device())?.to_dtype(z.dtype())?;
        Ok((Some(dz), None))
    }
}

#[cfg(feature = "cuda")]
fn cuda_bwd(z: &Tensor, targets: &Tensor, lse: &Tensor, dce: &Tensor) -> Result<Tensor> {
    use super::cuda::{by_dtype, hold, launch, rows_cfg, suffix, view, wrap};
    let z = z.contiguous()?;
    let (hz, ht, hl, hc) = (hold(&z), hold(targets), hold(lse), hold(dce));
    let ((sz, lz), (st, lt), (sl, ll), (sc, lc)) = (hz.cuda()?, ht.cuda()?, hl.cuda()?, hc.cuda()?);
    let dev = &sz.device;
    let (n, v) = lz.shape().dims2()?;
    let name = format!("ce_bwd_{}", suffix(z.dtype())?);
    let (tg, lv, cv) = (
        view::<u32>(st, lt)?,
        view::<f32>(sl, ll)?,
        view::<f32>(sc, lc)?,
    );
    let v_i = v as i32;
    Ok(by_dtype!(z.dtype(), T => {
        let zv = view::<T>(sz, lz)?;
        let dz = unsafe { dev.alloc::<T>(n * v) }?;
        launch!(dev, name, rows_cfg(n, 512, 0); &zv, &tg, &lv, &cv, &dz, &v_i);
        wrap(dz, dev, (n, v))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    #[test]
    fn fused_cross_entropy_matches_the_plain_path_forward_and_backward_on_cpu() -> Result<()> {
        let dev = Device::Cpu;
        for (dt, tol) in [(DType::F32, 1e-5f32), (DType::BF16, 1e-2)] {
            let z = Var::from_tensor(&Tensor::randn(0f32, 3.0, (6, 50), &dev)?.to_dtype(dt)?)?;
            let tg = Tensor::new(&[0u32, 49, 7, 7, 13, 1], &dev)?;
            let coef = Tensor::new(&[0.5f32, -1.0, 2.0, 0.0, 1.0, 0.25], &dev)?;
            let a = cross_entropy_rows(z.as_tensor(), &tg)?;
            let b = cross_entropy_rows_plain(z.as_tensor(), &tg)?;
            let d = super::cpu::max_abs_diff(&a, &b)?;
            assert!(d <= 1e-4, "{dt:?} forward {d}");
            let ga = (a * &coef)?.sum_all()?.backward()?;
            let gb = (b * &coef)?.sum_all()?.backward()?;
            let (p, q) = (
                ga.get(z.as_tensor()).unwrap(),
                gb.get(z.as_tensor()).unwrap(),
            );
            let d = super::cpu::max_abs_diff(p, q)?;
            assert!(d <= tol, "{dt:?} backward {d}");
        }
        Ok(())
    }
}
