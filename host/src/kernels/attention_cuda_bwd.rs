//! The fused attention's backward on CUDA (`kernels/attention.rs` calls it): delta = rowsum(o ⊙ dO), then
//! dK, dV and dQ by the wgmma kernel of `kernels/attention_sm90_bwd.cuh` on compute capability 9.x (TMA
//! loads and TMA reduce-adds of dQ into an f32 buffer, launched with tensor maps), else — or where a tensor
//! map cannot be encoded — by the mma.sync kernel of `kernels/attention.cuh` (dQ added with atomics), and
//! dq rounded to bf16 from that buffer.

use super::cuda::{hold, launch, use_sm90_attention, view, wrap, SM90};
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DevicePtr, DevicePtrMut, LaunchConfig,
};
use candle_core::cuda_backend::CudaDevice;
use candle_core::{Result, Tensor};
use half::bf16;

/// dq, dk, dv of the fused attention from q, k, v, o, dO and the forward's lse (bf16 [B, T, heads, D]).
pub(super) fn cuda_bwd(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    o: &Tensor,
    dout: &Tensor,
    lse: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
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
    let (rows_i, t_i, nh_i, nkv_i, d_i) = (rows as i64, t as i32, nh as i32, nkv as i32, d as i32);
    let cfg = LaunchConfig {
        grid_dim: ((rows * 32).div_ceil(256) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    launch!(dev, "flash_delta", cfg; &ov, &dv_, &delta, &rows_i, &t_i, &nh_i, &d_i);
    let dk = unsafe { dev.alloc::<bf16>(b * t * nkv * d) }?;
    let dv = unsafe { dev.alloc::<bf16>(b * t * nkv * d) }?;
    let scale = 1.0 / (d as f32).sqrt();
    // dK, dV and dQ: one CTA per (key tile, kv head, sequence), looping over the query tiles that see it;
    // dQ is added into the f32 dq_acc (TMA reduce or atomics), then scaled and rounded to bf16
    let mut dq_acc = dev.alloc_zeros::<f32>(rows * d)?;
    let dims = (b, t, nh, nkv, d);
    let scales = (std::f32::consts::LOG2_E * scale, scale);
    let sm90 = use_sm90_attention(dev)
        && sm90_dkdv(
            dev,
            (&qv, &kv, &vv, &dv_),
            (&lv_, &delta),
            (&dk, &dv, &mut dq_acc),
            dims,
            scales,
        )?;
    if !sm90 {
        let smem = (6 * 64 * (d + 8) * 2 + 1024) as u32;
        let cfg = LaunchConfig {
            grid_dim: (t.div_ceil(64) as u32, nkv as u32, b as u32),
            block_dim: (128, 1, 1),
            shared_mem_bytes: smem,
        };
        launch!(dev, format!("flash_bwd_dkdv_d{d}"), cfg, smem = smem;
            &qv, &kv, &vv, &dv_, &lv_, &delta, &dk, &dv, &dq_acc, &t_i, &nh_i, &nkv_i, &scales.0, &scale);
    }
    let dq = unsafe { dev.alloc::<bf16>(rows * d) }?;
    let n = (rows * d) as i64;
    let cfg = LaunchConfig {
        grid_dim: ((rows * d).div_ceil(256) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    launch!(dev, "flash_dq_from_acc", cfg; &dq_acc, &dq, &n, &scale);
    Ok((
        wrap(dq, dev, (b, t, nh, d)),
        wrap(dk, dev, (b, t, nkv, d)),
        wrap(dv, dev, (b, t, nkv, d)),
    ))
}

/// The dK/dV/dQ kernel of kernels/attention_sm90_bwd.cuh (2 warpgroups × 64 keys; Q, dO, K, V loaded and
/// dQ added into dq_acc by TMA), launched with tensor maps of q, k, v, dO and dq_acc. `Ok(false)`, with
/// nothing launched, where a tensor map cannot be encoded (the caller falls back to the mma.sync kernel).
fn sm90_dkdv(
    dev: &CudaDevice,
    (q, k, v, dout): (
        &CudaView<bf16>,
        &CudaView<bf16>,
        &CudaView<bf16>,
        &CudaView<bf16>,
    ),
    (lse, delta): (&CudaView<f32>, &CudaSlice<f32>),
    (dk, dv, dq_acc): (&CudaSlice<bf16>, &CudaSlice<bf16>, &mut CudaSlice<f32>),
    (b, t, nh, nkv, d): (usize, usize, usize, usize, usize),
    (scale_log2, scale): (f32, f32),
) -> Result<bool> {
    use super::tensor_map::{head_rows, Element};
    const KEYS: usize = 128; // SM90_BWD_BN
    const QUERIES: usize = 64; // SM90_BWD_BM
    const STAGES: usize = 3; // SM90_BWD_STAGES_64 and SM90_BWD_STAGES_128
    let stream = dev.cuda_stream();
    let (qp, _gq) = q.device_ptr(&stream);
    let (kp, _gk) = k.device_ptr(&stream);
    let (vp, _gv) = v.device_ptr(&stream);
    let (op, _go) = dout.device_ptr(&stream);
    let (ap, _ga) = dq_acc.device_ptr_mut(&stream);
    let maps = (
        head_rows(qp, Element::Bf16, (b, t, nh, d), QUERIES),
        head_rows(kp, Element::Bf16, (b, t, nkv, d), KEYS),
        head_rows(vp, Element::Bf16, (b, t, nkv, d), KEYS),
        head_rows(op, Element::Bf16, (b, t, nh, d), QUERIES),
        head_rows(ap, Element::F32, (b, t, nh, d), 16),
    );
    let (Ok(tq), Ok(tk), Ok(tv), Ok(tdo), Ok(tdq)) = maps else {
        return Ok(false);
    };
    // 1 KiB for alignment, the K and V tiles, STAGES stages of (Q, dO) tiles, two dSᵀ tiles, eight warps'
    // f32 dQ tiles [16 × 64], STAGES stages of lse/delta, 1 + STAGES mbarriers (SM90_BWD_SMEM)
    let smem = (1024
        + 2 * KEYS * d * 2
        + 2 * STAGES * QUERIES * d * 2
        + 2 * KEYS * QUERIES * 2
        + 8 * 16 * 64 * 4
        + 2 * STAGES * QUERIES * 4
        + (1 + STAGES) * 8) as u32;
    let cfg = LaunchConfig {
        grid_dim: (t.div_ceil(KEYS) as u32, nkv as u32, b as u32),
        block_dim: (256, 1, 1),
        shared_mem_bytes: smem,
    };
    let (t_i, nh_i, nkv_i) = (t as i32, nh as i32, nkv as i32);
    launch!(in &SM90; dev, format!("flash_bwd_sm90_d{d}"), cfg, smem = smem;
        &tq, &tk, &tv, &tdo, &tdq, lse, delta, dk, dv, &t_i, &nh_i, &nkv_i, &scale_log2, &scale);
    Ok(true)
}
