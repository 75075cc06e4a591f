//! The fused attention's backward on CUDA (`kernels/attention.rs` calls it): delta = rowsum(o ⊙ dO), then
//! dK, dV and dQ by the wgmma kernel of `kernels/attention_sm90_bwd.cuh` on compute capability 9.x, else by
//! the mma.sync kernel of `kernels/attention.cuh` — both add dQ into an f32 buffer with atomics — and dq
//! rounded to bf16 from that buffer.

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView};
use candle_core::{Result, Tensor};

/// dq, dk, dv of the fused attention from q, k, v, o, dO and the forward's lse (bf16 [B, T, heads, D]).
pub(super) fn cuda_bwd(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &Tensor,
    dout: &Tensor,
    lse: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    use super::cuda::{hold, launch, view, wrap};
    use candle_core::cuda_backend::cudarc::driver::LaunchConfig;
    use half::bf16;
    let (q, k, v, o) = (
        q.contiguous()?,
        k.contiguous()?,
        v.contiguous()?,
        o.contiguous()?,
    );
    let (hq, hk, hv, ho, hd, hl) = (
        hold(&q),
        hold(&k),
        hold(&v),
        hold(&o),
        hold(dout),
        hold(lse),
    );
    let ((sq, lq), (sk, lk), (sv, lv)) = (hq.cuda()?, hk.cuda()?, hv.cuda()?);
    let ((so, lo), (sd, ld), (sl, ll)) = (ho.cuda()?, hd.cuda()?, hl.cuda()?);
    let dev = &sq.device;
    let (b, t, nh, d) = lq.shape().dims4()?;
    let nkv = lk.shape().dims4()?.2;
    let (qv, kv, vv, ov, dv_, lv_) = (
        view::<bf16>(sq, lq)?,
        view::<bf16>(sk, lk)?,
        view::<bf16>(sv, lv)?,
        view::<bf16>(so, lo)?,
        view::<bf16>(sd, ld)?,
        view::<f32>(sl, ll)?,
    );
    let rows = b * t * nh;
    let delta = unsafe { dev.alloc::<f32>(rows) }?;
    let (rows_i, t_i, nh_i, d_i) = (rows as i64, t as i32, nh as i32, d as i32);
    let cfg = LaunchConfig {
        grid_dim: ((rows * 32).div_ceil(256) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    launch!(dev, "flash_delta", cfg; &ov, &dv_, &delta, &rows_i, &t_i, &nh_i, &d_i);
    let dk = unsafe { dev.alloc::<bf16>(b * t * nkv * d) }?;
    let dv = unsafe { dev.alloc::<bf16>(b * t * nkv * d) }?;
    let args = BwdArgs {
        q: &qv,
        k: &kv,
        v: &vv,
        dout: &dv_,
        lse: &lv_,
        delta: &delta,
        dims: (b, t, nh, nkv, d),
    };
    let dq = if super::cuda::use_sm90_attention(dev, d, super::cuda::AttentionPass::Backward) {
        dkdv_sm90(dev, &args, &dk, &dv)?
    } else {
        dkdv_mma_sync(dev, &args, &dk, &dv)?
    };
    Ok((
        wrap(dq, dev, (b, t, nh, d)),
        wrap(dk, dev, (b, t, nkv, d)),
        wrap(dv, dev, (b, t, nkv, d)),
    ))
}

/// The backward kernels' inputs: q, k, v, dO, lse, delta and (B, T, NH, NKV, D).
struct BwdArgs<'a> {
    q: &'a CudaView<'a, half::bf16>,
    k: &'a CudaView<'a, half::bf16>,
    v: &'a CudaView<'a, half::bf16>,
    dout: &'a CudaView<'a, half::bf16>,
    lse: &'a CudaView<'a, f32>,
    delta: &'a CudaSlice<f32>,
    dims: (usize, usize, usize, usize, usize),
}

/// dK, dV (written into `dk`, `dv`) and dq by the wgmma kernel of kernels/attention_sm90_bwd.cuh: one CTA
/// of 2 warpgroups × 64 keys per (key tile of 128, kv head, sequence); dQ added into an f32 [B, T, NH, D]
/// buffer with atomics, then scaled and rounded.
fn dkdv_sm90(
    dev: &candle_core::cuda_backend::CudaDevice,
    a: &BwdArgs<'_>,
    dk: &CudaSlice<half::bf16>,
    dv: &CudaSlice<half::bf16>,
) -> Result<CudaSlice<half::bf16>> {
    use super::cuda::launch;
    use candle_core::cuda_backend::cudarc::driver::LaunchConfig;
    let (b, t, nh, nkv, d) = a.dims;
    let (t_i, nh_i, nkv_i) = (t as i32, nh as i32, nkv as i32);
    let scale = 1.0 / (d as f32).sqrt();
    let sl2 = std::f32::consts::LOG2_E * scale;
    let dq_acc = dev.alloc_zeros::<f32>(b * t * nh * d)?;
    // 1 KiB for alignment, the K and V tiles of 128 keys, two stages of (Q, dO) tiles of 64 queries, the
    // dSᵀ tile, two stages of lse/delta (SM90_BWD_SMEM)
    let smem = (1024 + 2 * 128 * d * 2 + 4 * 64 * d * 2 + 128 * 64 * 2 + 4 * 64 * 4) as u32;
    let cfg = LaunchConfig {
        grid_dim: (t.div_ceil(128) as u32, nkv as u32, b as u32),
        block_dim: (2 * 128, 1, 1),
        shared_mem_bytes: smem,
    };
    let name = format!("flash_bwd_sm90_d{d}");
    launch!(in &super::cuda::SM90; dev, name, cfg, smem = smem;
        a.q, a.k, a.v, a.dout, a.lse, a.delta, dk, dv, &dq_acc, &t_i, &nh_i, &nkv_i, &sl2, &scale);
    dq_from_acc(dev, &dq_acc, scale)
}

/// dq = bf16(dq_acc · scale) (`flash_dq_from_acc`).
fn dq_from_acc(
    dev: &candle_core::cuda_backend::CudaDevice,
    dq_acc: &CudaSlice<f32>,
    scale: f32,
) -> Result<CudaSlice<half::bf16>> {
    use super::cuda::launch;
    use candle_core::cuda_backend::cudarc::driver::LaunchConfig;
    let n = dq_acc.len();
    let dq = unsafe { dev.alloc::<half::bf16>(n) }?;
    let n_i = n as i64;
    let cfg = LaunchConfig {
        grid_dim: (n.div_ceil(256) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    launch!(dev, "flash_dq_from_acc", cfg; dq_acc, &dq, &n_i, &scale);
    Ok(dq)
}

/// dK, dV (written into `dk`, `dv`) and dq by the mma.sync kernel of kernels/attention.cuh: one CTA of 4 warps
/// × 16 keys per (key tile of 64, kv head, sequence); dQ added into an f32 [B, T, NH, D] buffer with
/// atomics, then scaled and rounded.
fn dkdv_mma_sync(
    dev: &candle_core::cuda_backend::CudaDevice,
    a: &BwdArgs<'_>,
    dk: &CudaSlice<half::bf16>,
    dv: &CudaSlice<half::bf16>,
) -> Result<CudaSlice<half::bf16>> {
    use super::cuda::launch;
    use candle_core::cuda_backend::cudarc::driver::LaunchConfig;
    let (b, t, nh, nkv, d) = a.dims;
    let (t_i, nh_i, nkv_i) = (t as i32, nh as i32, nkv as i32);
    let scale = 1.0 / (d as f32).sqrt();
    let sl2 = std::f32::consts::LOG2_E * scale;
    let n = b * t * nh * d;
    let dq_acc = dev.alloc_zeros::<f32>(n)?;
    // K, V and two buffers of (Q, dO) tiles of 64 rows + lse/delta
    let smem = (6 * 64 * (d + 8) * 2 + 1024) as u32;
    let cfg = LaunchConfig {
        grid_dim: (t.div_ceil(64) as u32, nkv as u32, b as u32),
        block_dim: (128, 1, 1),
        shared_mem_bytes: smem,
    };
    let name = format!("flash_bwd_dkdv_d{d}");
    launch!(dev, name, cfg, smem = smem;
        a.q, a.k, a.v, a.dout, a.lse, a.delta, dk, dv, &dq_acc, &t_i, &nh_i, &nkv_i, &sl2, &scale);
    dq_from_acc(dev, &dq_acc, scale)
}
