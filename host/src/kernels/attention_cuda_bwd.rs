//! The fused attention's backward on CUDA (`kernels/attention.rs` calls it): delta = rowsum(o ⊙ dO), then
//! dK, dV and dQ by the wgmma kernel of `kernels/attention_sm90_bwd.cuh` on compute capability 9.x, else by
//! the mma.sync kernel of `kernels/attention.cuh` — same arguments; both add dQ into an f32 buffer with
//! atomics — and dq rounded to bf16 from that buffer.

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
    let (rows_i, t_i, nh_i, nkv_i, d_i) = (rows as i64, t as i32, nh as i32, nkv as i32, d as i32);
    let cfg = LaunchConfig {
        grid_dim: ((rows * 32).div_ceil(256) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    launch!(dev, "flash_delta", cfg; &ov, &dv_, &delta, &rows_i, &t_i, &nh_i, &d_i);
    let dk = unsafe { dev.alloc::<bf16>(b * t * nkv * d) }?;
    let dv = unsafe { dev.alloc::<bf16>(b * t * nkv * d) }?;
    let dq_acc = dev.alloc_zeros::<f32>(rows * d)?;
    let scale = 1.0 / (d as f32).sqrt();
    let sl2 = std::f32::consts::LOG2_E * scale;
    // dK, dV and dQ: one CTA per (key tile, kv head, sequence), looping over the query tiles that see it;
    // dQ is added into the f32 dq_acc with atomics, then scaled and rounded to bf16
    let kernel = DkdvKernel::for_device(dev, d);
    let cfg = LaunchConfig {
        grid_dim: (t.div_ceil(kernel.keys) as u32, nkv as u32, b as u32),
        block_dim: (kernel.threads, 1, 1),
        shared_mem_bytes: kernel.smem,
    };
    launch!(in kernel.module; dev, kernel.name, cfg, smem = kernel.smem;
        &qv, &kv, &vv, &dv_, &lv_, &delta, &dk, &dv, &dq_acc, &t_i, &nh_i, &nkv_i, &sl2, &scale);
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

/// The dK/dV/dQ kernel a backward launches, and its launch shape.
struct DkdvKernel {
    module: &'static super::cuda::KernelModule,
    name: String,
    /// Keys per CTA (the grid's x is ⌈T / keys⌉).
    keys: usize,
    threads: u32,
    /// Dynamic shared memory, bytes.
    smem: u32,
}

impl DkdvKernel {
    /// The wgmma kernel of kernels/attention_sm90_bwd.cuh where `use_sm90_attention` picks it (compute
    /// capability 9.x), else the mma.sync kernel of kernels/attention.cuh, for head dim `d`.
    fn for_device(dev: &candle_core::cuda_backend::CudaDevice, d: usize) -> Self {
        use super::cuda::{use_sm90_attention, FUSED, SM90};
        if use_sm90_attention(dev) {
            // 2 warpgroups × 64 keys; 1 KiB for alignment, the K and V tiles of 128 keys, two stages of
            // (Q, dO) tiles of 64 queries, the dSᵀ tile, two stages of lse/delta (SM90_BWD_SMEM)
            Self {
                module: &SM90,
                name: format!("flash_bwd_sm90_d{d}"),
                keys: 128,
                threads: 256,
                smem: (1024 + 2 * 128 * d * 2 + 4 * 64 * d * 2 + 128 * 64 * 2 + 4 * 64 * 4) as u32,
            }
        } else {
            // 4 warps × 16 keys; K, V and two buffers of (Q, dO) tiles of 64 rows (padded), + lse/delta
            Self {
                module: &FUSED,
                name: format!("flash_bwd_dkdv_d{d}"),
                keys: 64,
                threads: 128,
                smem: (6 * 64 * (d + 8) * 2 + 1024) as u32,
            }
        }
    }
}
