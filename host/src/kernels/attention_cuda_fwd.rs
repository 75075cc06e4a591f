//! The fused attention's forward on CUDA (`kernels/attention.rs` calls it): o and the log-sum-exp lse from
//! bf16 q, k, v. On compute capability 9.x (see `cuda::use_sm90_attention`) the warp-specialised kernel of
//! `kernels/attention_sm90.cu` (TMA loads by a producer warpgroup, wgmma in three consumer warpgroups at
//! head dim 64 and two at 128), launched with tensor maps of q, k and v; elsewhere, or where a tensor map
//! cannot be encoded, the mma.sync kernel of `kernels/attention.cuh`. Same contract, same outputs to
//! rounding.

use super::cuda::{launch, use_sm90_attention, SM90};
use super::tensor_map::{self, Element};
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DevicePtr, LaunchConfig};
use candle_core::cuda_backend::CudaDevice;
use candle_core::Result;
use half::bf16;

/// Keys per tile of the sm_90a forward (`SM90_BN`).
const SM90_KEYS: usize = 128;

/// Consumer warpgroups (64 query rows each) and K/V stages of the sm_90a forward at head dim `d`
/// (`WS_CONSUMERS_<D>`, `WS_STAGES_<D>` of kernels/attention_sm90.cu).
fn ws_shape(d: usize) -> (usize, usize) {
    if d == 64 {
        (3, 3)
    } else {
        (2, 2)
    }
}

/// o [B, T, NH, D] and lse [B, NH, T] (log₂ units) of causal grouped-query attention.
pub(super) fn cuda_fwd(
    dev: &CudaDevice,
    (q, k, v): (&CudaView<bf16>, &CudaView<bf16>, &CudaView<bf16>),
    (b, t, nh, nkv, d): (usize, usize, usize, usize, usize),
) -> Result<(CudaSlice<bf16>, CudaSlice<f32>)> {
    let o = unsafe { dev.alloc::<bf16>(b * t * nh * d) }?;
    let lse = unsafe { dev.alloc::<f32>(b * nh * t) }?;
    let (t_i, nh_i, nkv_i) = (t as i32, nh as i32, nkv as i32);
    let sl2 = std::f32::consts::LOG2_E / (d as f32).sqrt();
    let grid = |rows: usize| (t.div_ceil(rows) as u32, nh as u32, b as u32);
    if use_sm90_attention(dev) {
        let (consumers, stages) = ws_shape(d);
        let rows = 64 * consumers;
        let stream = dev.cuda_stream();
        let (qp, _gq) = q.device_ptr(&stream);
        let (kp, _gk) = k.device_ptr(&stream);
        let (vp, _gv) = v.device_ptr(&stream);
        let maps = (
            tensor_map::head_rows(qp, Element::Bf16, (b, t, nh, d), rows),
            tensor_map::head_rows(kp, Element::Bf16, (b, t, nkv, d), SM90_KEYS),
            tensor_map::head_rows(vp, Element::Bf16, (b, t, nkv, d), SM90_KEYS),
        );
        if let (Ok(tq), Ok(tk), Ok(tv)) = maps {
            // 1 KiB for alignment, the Q tile, `stages` stages each of K and V tiles, 1 + 4·stages
            // 8-byte mbarriers (WsSmem::bytes); a producer warpgroup + the consumers
            let smem = (1024 + rows * d * 2 + 2 * stages * SM90_KEYS * d * 2 + 8 * (1 + 4 * stages))
                as u32;
            let cfg = LaunchConfig {
                grid_dim: grid(rows),
                block_dim: (128 * (consumers as u32 + 1), 1, 1),
                shared_mem_bytes: smem,
            };
            let name = format!("flash_fwd_ws_d{d}");
            launch!(in &SM90; dev, name, cfg, smem = smem; &tq, &tk, &tv, &o, &lse, &t_i, &nh_i, &nkv_i, &sl2);
            return Ok((o, lse));
        }
    }
    let smem = (4 * 64 * (d + 8) * 2) as u32; // two buffers of (K, V) tiles
    let cfg = LaunchConfig {
        grid_dim: grid(64),
        block_dim: (128, 1, 1),
        shared_mem_bytes: smem,
    };
    let name = format!("flash_fwd_d{d}");
    launch!(dev, name, cfg, smem = smem; q, k, v, &o, &lse, &t_i, &nh_i, &nkv_i, &sl2);
    Ok((o, lse))
}
