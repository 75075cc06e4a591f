//! Fused causal grouped-query attention, flash-style: o = softmax(q·kᵀ/√D + causal mask)·v for
//! q [B, T, NH, D], k/v [B, T, NKV, D] (query head h reads kv head h / (NH/NKV)), output [B, T, NH, D].
//! On CUDA (bf16, D = 64 or 128) 64×64 tiles of scores live only in registers (tensor-core mma, f32
//! statistics, online softmax); the per-row log-sum-exp is kept for the backward, which recomputes the
//! probabilities tile by tile in one kernel per key tile: dK and dV in registers, dQ added into an f32
//! buffer with atomics (five T²·D products in all, as FlashAttention-2's backward).
//! Nothing of size [T, T] is stored (kernels/attention.cuh). On compute capability 9.x both passes run the
//! Hopper kernels of kernels/attention_sm90.cu (TMA + wgmma forward) and attention_sm90_bwd.cuh (wgmma)
//! instead: same contract, same outputs to rounding.
//! The log-sum-exp is in units of log₂ of the scaled scores: lse₂ = log₂ Σ_j exp(q·k_j/√D).
//! The CPU twin computes the same in f32 loops (for tests; the CPU model uses the plain path).

use super::cpu;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Tensor, D};
use std::sync::Mutex;

struct AttentionOp {
    lse: Mutex<Option<Tensor>>,
}

/// Whether the fused kernel handles this case on CUDA: bf16 and a head dimension of 64 or 128.
/// Additive causal mask [T, T]: 0 on and below the diagonal, −∞ above.
pub fn causal_mask(t: usize, dev: &candle_core::Device) -> candle_core::Result<Tensor> {
    // built where it is used (a [T, T] comparison), not on the host and copied (16 MB for T = 2048)
    let pos = Tensor::arange(0u32, t as u32, dev)?;
    let future = pos.unsqueeze(0)?.broadcast_gt(&pos.unsqueeze(1)?)?; // [i, j] = j > i
    let neg = Tensor::full(f32::NEG_INFINITY, (t, t), dev)?;
    future.where_cond(&neg, &Tensor::zeros((t, t), DType::F32, dev)?)
}

pub fn supported(dtype: DType, head_dim: usize) -> bool {
    dtype == DType::BF16 && matches!(head_dim, 64 | 128)
}

/// Causal attention of q [B, T, NH, D] over k, v [B, T, NKV, D] with scale 1/√D; differentiable in all three.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (b, t, nh, d) = q.dims4()?;
    let (b2, t2, nkv, d2) = k.dims4()?;
    if (b2, t2, d2) != (b, t, d) || v.dims() != k.dims() || nkv == 0 || nh % nkv != 0 {
        candle_core::bail!(
            "attention: q {:?}, k {:?}, v {:?} do not fit",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    q.contiguous()?.apply_op3(
        &k.contiguous()?,
        &v.contiguous()?,
        AttentionOp {
            lse: Mutex::new(None),
        },
    )
}

/// The same attention as plain candle ops in f32 (probabilities rounded to the input dtype before P·V,
/// as the model's plain path does); output in q's dtype.
pub fn attention_plain(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let dt = q.dtype();
    let (_, _, vh, p) = plain_probs(q, k, v)?;
    let p = p.to_dtype(dt)?.to_dtype(DType::F32)?;
    p.matmul(&vh)?.transpose(1, 2)?.to_dtype(dt)
}

/// q, k, v as f32 [B, NH, T, D] (each kv head repeated for its query heads) and the causal softmax
/// probabilities [B, NH, T, T] (the max shift carries no gradient).
fn plain_probs(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
    let (b, t, nh, d) = q.dims4()?;
    let nkv = k.dim(2)?;
    let rep = nh / nkv;
    let f =
        |x: &Tensor| -> Result<Tensor> { x.transpose(1, 2)?.to_dtype(DType::F32)?.contiguous() };
    let expand = |x: Tensor| -> Result<Tensor> {
        x.unsqueeze(2)?
            .expand((b, nkv, rep, t, d))?
            .reshape((b, nh, t, d))
    };
    let (qh, kh, vh) = (f(q)?, expand(f(k)?)?, expand(f(v)?)?);
    let mask = causal_mask(t, q.device())?;
    let s = (qh.matmul(&kh.t()?)? * (1.0 / (d as f64).sqrt()))?.broadcast_add(&mask)?;
    let max = s.max_keepdim(D::Minus1)?.detach();
    let e = s.broadcast_sub(&max)?.exp()?;
    let p = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
    Ok((qh, kh, vh, p))
}

/// Causal attention with no autograd, keeping what [`attention_backward`] needs: (o, lse). The fused
/// kernel where [`super::Kernels::fuse`] says so and [`supported`]; else [`attention_plain`] (lse None).
pub fn attention_forward(
    kernels: super::Kernels,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
) -> Result<(Tensor, Option<Tensor>)> {
    let d = q.dim(3)?;
    if kernels.fuse(q.device(), q.dtype()) && supported(q.dtype(), d) {
        let op = AttentionOp {
            lse: Mutex::new(None),
        };
        let o = q
            .contiguous()?
            .apply_op3_no_bwd(&k.contiguous()?, &v.contiguous()?, &op)?;
        let lse = op.lse.lock().ok().and_then(|g| g.clone());
        return Ok((o, lse));
    }
    Ok((
        attention_plain(&q.detach(), &k.detach(), &v.detach())?,
        None,
    ))
}

/// (dq, dk, dv) of causal attention for upstream gradient `dout`, given [`attention_forward`]'s output:
/// the fused kernel when it produced `lse`, else plain candle ops in f32.
pub fn attention_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &Tensor,
    dout: &Tensor,
    lse: Option<&Tensor>,
) -> Result<(Tensor, Tensor, Tensor)> {
    let dout = dout.to_dtype(q.dtype())?.contiguous()?;
    #[cfg(feature = "cuda")]
    if let Some(lse) = lse {
        return super::attention_cuda_bwd::cuda_bwd(q, k, v, o, &dout, lse);
    }
    let _ = (o, lse);
    plain_bwd(q, k, v, &dout)
}

impl AttentionOp {
    fn keep(&self, lse: Tensor) {
        if let Ok(mut g) = self.lse.lock() {
            *g = Some(lse);
        }
    }
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "wmtp-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dt = s1.dtype();
        let (b, t, nh, d) = l1.shape().dims4()?;
        let nkv = l2.shape().dims4()?.2;
        let rep = nh / nkv;
        let (q, k, v) = (
            cpu::f32_vec(s1, l1)?,
            cpu::f32_vec(s2, l2)?,
            cpu::f32_vec(s3, l3)?,
        );
        let scale = 1.0 / (d as f32).sqrt();
        let mut o = vec![0f32; q.len()];
        let mut lse = vec![0f32; b * nh * t];
        let mut s = vec![0f32; t];
        for bi in 0..b {
            for h in 0..nh {
                let kh = h / rep;
                for i in 0..t {
                    let qr = &q[((bi * t + i) * nh + h) * d..][..d];
                    let mut m = f32::NEG_INFINITY;
                    for (j, sj) in s.iter_mut().enumerate().take(i + 1) {
                        let kr = &k[((bi * t + j) * nkv + kh) * d..][..d];
                        *sj = qr.iter().zip(kr).map(|(a, b)| a * b).sum::<f32>() * scale;
                        m = m.max(*sj);
                    }
                    let l: f32 = s[..=i].iter().map(|x| (x - m).exp()).sum();
                    lse[(bi * nh + h) * t + i] = (m + l.ln()) * std::f32::consts::LOG2_E;
                    let or = &mut o[((bi * t + i) * nh + h) * d..][..d];
                    for (j, sj) in s.iter().enumerate().take(i + 1) {
                        let p = cpu::round((sj - m).exp() / l, dt);
                        let vr = &v[((bi * t + j) * nkv + kh) * d..][..d];
                        for (ov, vv) in or.iter_mut().zip(vr) {
                            *ov += p * vv;
                        }
                    }
                }
            }
        }
        self.keep(Tensor::from_vec(lse, (b, nh, t), &Device::Cpu)?);
        let o = o.into_iter().map(|x| cpu::round(x, dt)).collect();
        Ok((cpu::storage(o, dt)?, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use super::cuda::{view, wrap};
        use half::bf16;
        let dev = &s1.device;
        let (b, t, nh, d) = l1.shape().dims4()?;
        let nkv = l2.shape().dims4()?.2;
        if !supported(s1.dtype(), d) {
            candle_core::bail!("fused attention on CUDA needs bf16 and head_dim 64 or 128");
        }
        let (q, k, v) = (
            view::<bf16>(s1, l1)?,
            view::<bf16>(s2, l2)?,
            view::<bf16>(s3, l3)?,
        );
        let (o, lse) = super::attention_cuda_fwd::cuda_fwd(dev, (&q, &k, &v), (b, t, nh, nkv, d))?;
        self.keep(wrap(lse, dev, (b, nh, t)));
        Ok((
            candle_core::CudaStorage::wrap_cuda_slice(o, dev.clone()),
            l1.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        o: &Tensor,
        dout: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dout = dout.contiguous()?;
        #[cfg(feature = "cuda")]
        if q.device().is_cuda() {
            let lse = match self.lse.lock().ok().and_then(|g| g.clone()) {
                Some(l) => l,
                None => candle_core::bail!("attention: backward before forward"),
            };
            let (dq, dk, dv) = super::attention_cuda_bwd::cuda_bwd(q, k, v, o, &dout, &lse)?;
            return Ok((Some(dq), Some(dk), Some(dv)));
        }
        let _ = o;
        let (dq, dk, dv) = plain_bwd(q, k, v, &dout)?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// dq, dk, dv by plain candle ops in f32 (recomputing the probabilities).
fn plain_bwd(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    dout: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (b, t, nh, d) = q.dims4()?;
    let nkv = k.dim(2)?;
    let dt = q.dtype();
    let scale = 1.0 / (d as f64).sqrt();
    let (qh, kh, vh, p) = plain_probs(q, k, v)?;
    let doh = dout.transpose(1, 2)?.to_dtype(DType::F32)?.contiguous()?;
    let dv = p.t()?.matmul(&doh)?;
    let dp = doh.matmul(&vh.t()?)?;
    let ds = (&p * dp.broadcast_sub(&(&dp * &p)?.sum_keepdim(D::Minus1)?)?)?;
    let dq = (ds.matmul(&kh)? * scale)?;
    let dk = (ds.t()?.matmul(&qh)? * scale)?;
    let group = |x: Tensor| -> Result<Tensor> {
        x.reshape((b, nkv, nh / nkv, t, d))?
            .sum(2)?
            .transpose(1, 2)?
            .to_dtype(dt)
    };
    Ok((dq.transpose(1, 2)?.to_dtype(dt)?, group(dk)?, group(dv)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    #[test]
    fn fused_attention_matches_the_plain_path_forward_and_backward_on_cpu() -> Result<()> {
        let dev = Device::Cpu;
        let (b, t, nh, nkv, d) = (2, 9, 4, 2, 8);
        for (dt, tol) in [(DType::F32, 1e-5f32), (DType::BF16, 3e-2)] {
            let mk = |h| -> Result<Var> {
                Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, t, h, d), &dev)?.to_dtype(dt)?)
            };
            let (q, k, v) = (mk(nh)?, mk(nkv)?, mk(nkv)?);
            let dy = Tensor::randn(0f32, 1.0, (b, t, nh, d), &dev)?;
            let a = attention(q.as_tensor(), k.as_tensor(), v.as_tensor())?;
            let p = attention_plain(q.as_tensor(), k.as_tensor(), v.as_tensor())?;
            assert!(
                super::cpu::max_abs_diff(&a, &p)? <= tol,
                "{dt:?} forward {}",
                super::cpu::max_abs_diff(&a, &p)?
            );
            let ga = (a.to_dtype(DType::F32)? * &dy)?.sum_all()?.backward()?;
            let gp = (p.to_dtype(DType::F32)? * &dy)?.sum_all()?.backward()?;
            for x in [q.as_tensor(), k.as_tensor(), v.as_tensor()] {
                let dd = super::cpu::max_abs_diff(ga.get(x).unwrap(), gp.get(x).unwrap())?;
                assert!(dd <= tol * 4.0, "{dt:?} backward {dd}");
            }
        }
        Ok(())
    }
}
