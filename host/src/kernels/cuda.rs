//! Launching the fused kernels (fat binaries of SASS + PTX, host/build.rs) on candle's CUDA storages.

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, LaunchConfig};
use candle_core::cuda_backend::{CudaDType, CudaDevice, CudaStorage};
use candle_core::op::BackpropOp;
use candle_core::{bail, DType, Layout, Result, Shape, Storage, StorageRef, Tensor};

/// A module of our kernels: the name it is cached under and its image (a fat binary: SASS for the build's
/// `CUDA_COMPUTE_CAP` and PTX for the driver to JIT-compile on other GPUs; empty when not built).
pub struct KernelModule {
    /// The cache key, unique per module.
    pub name: &'static str,
    /// The fat binary host/build.rs wrote.
    pub image: &'static [u8],
}

/// `kernels/fused.cu`.
pub const FUSED: KernelModule = KernelModule {
    name: "wmtp_fused",
    image: include_bytes!(concat!(env!("OUT_DIR"), "/fused.fatbin")),
};

/// `kernels/attention_sm90.cu` (Hopper's warpgroup MMA and TMA, sm_90a); empty when the build's `CUDA_COMPUTE_CAP`
/// is not 90.
pub const SM90: KernelModule = KernelModule {
    name: "wmtp_attention_sm90",
    image: include_bytes!(concat!(env!("OUT_DIR"), "/attention_sm90.fatbin")),
};

/// Kernel `name` of `module` on `dev`, the module loaded on first use and kept per (device, module) for
/// the process (candle's own module cache takes PTX text only; a fat binary lets the driver load the SASS
/// without JIT-compiling).
pub fn function(
    dev: &CudaDevice,
    module: &KernelModule,
    name: &str,
) -> Result<candle_core::cuda_backend::cudarc::driver::CudaFunction> {
    use candle_core::cuda_backend::cudarc::driver::CudaModule;
    use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    type Cache =
        Mutex<HashMap<(candle_core::cuda_backend::DeviceId, &'static str), Arc<CudaModule>>>;
    static LOADED: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();
    let cache = LOADED.get_or_init(|| Mutex::new(HashMap::new()));
    let key = (dev.id(), module.name);
    let loaded = cache.lock().ok().and_then(|c| c.get(&key).cloned());
    let m = match loaded {
        Some(m) => m,
        None => {
            if module.image.is_empty() {
                bail!(
                    "kernel module {} was not built (CUDA_COMPUTE_CAP)",
                    module.name
                );
            }
            let ctx = dev.cuda_stream().context().clone();
            let m = ctx
                .load_module(Ptx::from_binary(module.image.to_vec()))
                .map_err(err)?;
            if let Ok(mut c) = cache.lock() {
                c.insert(key, m.clone());
            }
            m
        }
    };
    m.load_function(name).map_err(err)
}

/// Whether the attention on `dev` runs the sm_90a kernels of `kernels/attention_sm90.cu` (forward: TMA and
/// wgmma, warp-specialised; backward: wgmma) rather than the mma.sync ones of `kernels/attention.cuh`: they
/// were built and the device has compute capability 9.x — both passes, both head dims (on an H100 the
/// forward takes 0.47–0.75× and the backward 0.57–0.86× the mma.sync kernels' time).
/// `WMTP_ATTENTION_SM90=0` forces the mma.sync kernels (benchmarks set it to time both in one build).
pub fn use_sm90_attention(dev: &CudaDevice) -> bool {
    use candle_core::cuda_backend::cudarc::driver::sys::CUdevice_attribute as A;
    // read once per process: this runs at every attention forward and backward
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    !*OFF.get_or_init(|| std::env::var("WMTP_ATTENTION_SM90").as_deref() == Ok("0"))
        && !SM90.image.is_empty()
        && dev
            .cuda_stream()
            .context()
            .attribute(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
            .is_ok_and(|major| major == 9)
}

/// A CUDA driver error as a candle error.
pub fn err<E: std::error::Error + Send + Sync + 'static>(e: E) -> candle_core::Error {
    candle_core::Error::Cuda(Box::new(e))
}

/// The kernel-name suffix of a dtype the fused kernels support.
pub fn suffix(dt: DType) -> Result<&'static str> {
    match dt {
        DType::F32 => Ok("f32"),
        DType::BF16 => Ok("bf16"),
        other => bail!("fused kernels support f32 and bf16, not {other:?}"),
    }
}

/// The elements of a contiguous storage under `l` as a typed view.
pub fn view<'a, T: CudaDType>(s: &'a CudaStorage, l: &Layout) -> Result<CudaView<'a, T>> {
    if !l.is_contiguous() {
        bail!("fused kernel: the input must be contiguous");
    }
    let o = l.start_offset();
    Ok(s.as_cuda_slice::<T>()?.slice(o..o + l.shape().elem_count()))
}

/// A fresh tensor (no gradient edge) around a device buffer.
pub fn wrap<T: CudaDType>(s: CudaSlice<T>, dev: &CudaDevice, shape: impl Into<Shape>) -> Tensor {
    Tensor::from_storage(
        Storage::Cuda(CudaStorage::wrap_cuda_slice(s, dev.clone())),
        shape,
        BackpropOp::none(),
        false,
    )
}

/// A tensor's storage held for reading while a kernel is queued on it.
pub struct Held<'a>(StorageRef<'a>, &'a Layout);

/// Holds `t`'s storage.
pub fn hold(t: &Tensor) -> Held<'_> {
    let (g, l) = t.storage_and_layout();
    Held(g, l)
}

impl Held<'_> {
    /// The CUDA storage and its layout (an error for a CPU tensor).
    pub fn cuda(&self) -> Result<(&CudaStorage, &Layout)> {
        match &*self.0 {
            Storage::Cuda(s) => Ok((s, self.1)),
            _ => bail!("fused kernel: tensor is not on a CUDA device"),
        }
    }
}

/// One block per row of `threads` threads.
pub fn rows_cfg(rows: usize, threads: u32, smem: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: smem,
    }
}

/// One thread per element, 256 per block.
pub fn elems_cfg(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One thread per 8 elements (the vectorised elementwise kernels), 256 per block.
pub fn elems8_cfg(n: usize) -> LaunchConfig {
    elems_cfg(n.div_ceil(8))
}

/// `$body` with `$t` the element type of dtype `$dt`: f32, else bf16 (the fused kernels' two types).
macro_rules! by_dtype {
    ($dt:expr, $t:ident => $body:expr) => {
        match $dt {
            candle_core::DType::F32 => {
                type $t = f32;
                $body
            }
            _ => {
                type $t = half::bf16;
                $body
            }
        }
    };
}
pub(crate) use by_dtype;

/// Queues kernel `$name` of the fused module on `$dev` with `$cfg` and the arguments (references).
/// `smem = N` first raises the kernel's dynamic shared-memory limit to N bytes; a leading `in MODULE;`
/// (a [`KernelModule`]) takes the kernel from that module instead of the fused one.
macro_rules! launch {
    ($dev:expr, $name:expr, $cfg:expr, smem = $smem:expr; $($arg:expr),* $(,)?) => {
        $crate::kernels::cuda::launch!(in &$crate::kernels::cuda::FUSED; $dev, $name, $cfg, smem = $smem; $($arg),*)
    };
    (in $module:expr; $dev:expr, $name:expr, $cfg:expr, smem = $smem:expr; $($arg:expr),* $(,)?) => {{
        let f = $crate::kernels::cuda::function($dev, $module, &$name)?;
        f.set_attribute(
            candle_core::cuda_backend::cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            $smem as i32,
        ).map_err($crate::kernels::cuda::err)?;
        if $smem > 48 * 1024 {
            // all of the unified L1 as shared memory, so that several such blocks fit on one SM
            f.set_attribute(
                candle_core::cuda_backend::cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT,
                100,
            ).map_err($crate::kernels::cuda::err)?;
        }
        $crate::kernels::cuda::launch!(@go $dev, f, $cfg; $($arg),*)
    }};
    ($dev:expr, $name:expr, $cfg:expr; $($arg:expr),* $(,)?) => {
        $crate::kernels::cuda::launch!(in &$crate::kernels::cuda::FUSED; $dev, $name, $cfg; $($arg),*)
    };
    (in $module:expr; $dev:expr, $name:expr, $cfg:expr; $($arg:expr),* $(,)?) => {{
        let f = $crate::kernels::cuda::function($dev, $module, &$name)?;
        $crate::kernels::cuda::launch!(@go $dev, f, $cfg; $($arg),*)
    }};
    (@go $dev:expr, $f:expr, $cfg:expr; $($arg:expr),*) => {{
        #[allow(unused_imports)]
        use candle_core::cuda_backend::cudarc::driver::PushKernelArg as _;
        let stream = $dev.cuda_stream();
        let mut b = stream.launch_builder(&$f);
        $( b.arg($arg); )*
        unsafe { b.launch($cfg) }.map_err($crate::kernels::cuda::err)?;
    }};
}
pub(crate) use launch;
