//! TMA tensor maps (Hopper's tensor-memory accelerator) for the sm_90a attention kernels of
//! `kernels/attention_sm90.cu` (forward) and `kernels/attention_sm90_bwd.cuh` (backward): the driver's
//! 128-byte description of a global tensor and of the box one copy moves between it and shared memory,
//! passed to the kernel by value (`const __grid_constant__ TmaDesc`).

use candle_core::cuda_backend::cudarc::driver::{sys, DeviceRepr};
use candle_core::Result;

/// An encoded `CUtensorMap`, laid out as the kernels' `TmaDesc` (16 × u64, 64-byte aligned).
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub struct TensorMap([u64; 16]);

// SAFETY: a plain 128-byte value the driver copies into the kernel's parameter space; the kernel parameter
// (`TmaDesc`) has the same size and alignment.
unsafe impl DeviceRepr for TensorMap {}

/// The element type of a mapped tensor.
#[derive(Clone, Copy, Debug)]
pub enum Element {
    /// bf16 (q, k, v, dO): boxes of 64 columns.
    Bf16,
    /// f32 (the backward's dQ accumulator): boxes of 32 columns.
    F32,
}

impl Element {
    fn bytes(self) -> usize {
        match self {
            Element::Bf16 => 2,
            Element::F32 => 4,
        }
    }
    fn driver_type(self) -> sys::CUtensorMapDataType {
        match self {
            Element::Bf16 => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
            Element::F32 => sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_FLOAT32,
        }
    }
}

/// The tensor map of a tensor [B, T, heads, D] of `element`s at device address `ptr` whose boxes are
/// `rows` rows × 128 bytes of columns of one head (64 bf16 or 32 f32; dims innermost first: column, head,
/// row, batch), in shared memory with the 128-byte swizzle of `kernels/sm90.cuh`'s tiles. Loads read rows
/// past T as 0; reduces skip them.
/// Fails (and the caller falls back to a kernel without TMA) when the driver refuses it, e.g. for an
/// address that is not 16-byte aligned.
pub fn head_rows(
    ptr: sys::CUdeviceptr,
    element: Element,
    (b, t, heads, d): (usize, usize, usize, usize),
    rows: usize,
) -> Result<TensorMap> {
    let e = element.bytes();
    let dims: [u64; 4] = [d as u64, heads as u64, t as u64, b as u64];
    let strides: [u64; 3] = [
        (d * e) as u64,
        (heads * d * e) as u64,
        (t * heads * d * e) as u64,
    ];
    let boxed: [u32; 4] = [(128 / e) as u32, 1, rows as u32, 1];
    let unit: [u32; 4] = [1; 4];
    let mut map = std::mem::MaybeUninit::<sys::CUtensorMap>::zeroed();
    // SAFETY: every pointer is to a live local array of the rank (4) or rank − 1 (strides) the call reads;
    // the driver only encodes (no device access).
    let status = unsafe {
        sys::cuTensorMapEncodeTiled(
            map.as_mut_ptr(),
            element.driver_type(),
            4,
            ptr as *mut std::ffi::c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxed.as_ptr(),
            unit.as_ptr(),
            sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    };
    if status != sys::CUresult::CUDA_SUCCESS {
        candle_core::bail!(
            "cuTensorMapEncodeTiled([{b}, {t}, {heads}, {d}] {element:?}, box {rows} rows): {status:?}"
        );
    }
    // SAFETY: the call succeeded, so it wrote the whole map (zeroed before in any case)
    Ok(TensorMap(unsafe { map.assume_init() }.opaque))
}
