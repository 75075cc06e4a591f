//! Where and in which precision a model runs, as typed settings: parsed once (from a config key or a
//! command-line flag) and turned into candle's `Device` / `DType` where tensors are made.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A compute device: `cpu`, `cuda` (= `cuda:0`) or `cuda:N` (CUDA needs a build with `--features cuda`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    /// The CPU.
    #[default]
    Cpu,
    /// CUDA device N.
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(i)) => Ok(DeviceSpec::Cuda(i)),
                _ => Err(format!("unknown device `{s}` (cpu, cuda, cuda:N)")),
            },
        }
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> String {
        d.to_string()
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl DeviceSpec {
    /// The candle device (an error on a build without CUDA, or when device N does not exist).
    pub fn open(self) -> Result<candle_core::Device> {
        Ok(match self {
            DeviceSpec::Cpu => candle_core::Device::Cpu,
            DeviceSpec::Cuda(_) if !cfg!(feature = "cuda") => anyhow::bail!(
                "device {self}: this wmtp was built without CUDA — build it with \
                 `cargo build --release --features cuda` (a CUDA toolkit, nvcc, is needed)"
            ),
            DeviceSpec::Cuda(i) => {
                let dev = candle_core::Device::new_cuda(i)
                    .map_err(|e| anyhow::anyhow!("opening device {self}: {e}"))?;
                #[cfg(feature = "cuda")]
                {
                    keep_freed_memory(i).map_err(|e| anyhow::anyhow!("device {self}: {e}"))?;
                    // candle queues everything on its one stream, so cudarc's per-buffer events (two
                    // created per allocation, recorded and waited on at every kernel launch because
                    // candle's stream puts the context in multi-stream mode) order nothing: they only
                    // cost host time between launches. A second stream (FSDP's prefetch) orders its
                    // work by hand (parallel/fsdp/ahead.rs).
                    if let candle_core::Device::Cuda(c) = &dev {
                        // SAFETY: nothing has been allocated or queued on this device yet, and all
                        // later work of this process goes to candle's stream, or is ordered by events
                        // by hand.
                        unsafe { c.disable_event_tracking() };
                    }
                }
                dev
            }
        })
    }
}

impl DeviceSpec {
    /// GiB of the device's memory pool (every tensor candle allocates) at its high-water marks since
    /// the start: (in use by tensors, reserved from the driver). `None` off CUDA or when the driver
    /// does not answer. The reserved figure is what nvidia-smi shows, less the CUDA context and
    /// libraries' own buffers (cuBLAS workspaces, NCCL channels).
    pub fn memory_high_water(&self) -> Option<(f64, f64)> {
        match self {
            DeviceSpec::Cpu => None,
            #[cfg(feature = "cuda")]
            DeviceSpec::Cuda(i) => pool_high_water(*i).ok(),
            #[cfg(not(feature = "cuda"))]
            DeviceSpec::Cuda(_) => None,
        }
    }
}

#[cfg(feature = "cuda")]
fn pool_high_water(
    ordinal: usize,
) -> Result<(f64, f64), candle_core::cuda_backend::cudarc::driver::DriverError> {
    use candle_core::cuda_backend::cudarc::driver::sys;
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    // SAFETY: plain driver calls on out-pointers we own, after the device was opened.
    unsafe {
        let mut dev: sys::CUdevice = 0;
        sys::cuDeviceGet(&mut dev, ordinal as i32).result()?;
        let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
        sys::cuDeviceGetDefaultMemPool(&mut pool, dev).result()?;
        let read = |a: sys::CUmemPool_attribute| -> Result<u64, _> {
            let mut v: u64 = 0;
            sys::cuMemPoolGetAttribute(pool, a, &mut v as *mut u64 as *mut std::ffi::c_void)
                .result()
                .map(|_| v)
        };
        let used = read(sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH)?;
        let reserved = read(sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH)?;
        Ok((gib(used), gib(reserved)))
    }
}

/// Lets the device's default memory pool (candle allocates with cuMemAllocAsync from it) keep freed
/// memory for reuse instead of returning it to the driver at every synchronisation: the default release
/// threshold of 0 turns every allocation after a sync into a driver call (measured: a 2048×2048 linear
/// over 16k rows took 0.34–0.48 ms instead of ~0.2 ms). Peak memory is unchanged; freed blocks are reused.
#[cfg(feature = "cuda")]
fn keep_freed_memory(
    ordinal: usize,
) -> Result<(), candle_core::cuda_backend::cudarc::driver::DriverError> {
    use candle_core::cuda_backend::cudarc::driver::sys;
    // SAFETY: plain driver calls on out-pointers we own; the context exists (candle just created it).
    unsafe {
        let mut dev: sys::CUdevice = 0;
        sys::cuDeviceGet(&mut dev, ordinal as i32).result()?;
        let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
        sys::cuDeviceGetDefaultMemPool(&mut pool, dev).result()?;
        let mut threshold: u64 = u64::MAX;
        sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            &mut threshold as *mut u64 as *mut std::ffi::c_void,
        )
        .result()
    }
}

/// The compute dtype of the model's weights and matmuls: `f32`, `bf16` or `f16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit float.
    #[default]
    F32,
    /// bfloat16.
    Bf16,
    /// IEEE half.
    F16,
}

impl FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            "f16" => Ok(Precision::F16),
            _ => Err(format!("unknown dtype `{s}` (f32, bf16, f16)")),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        })
    }
}

impl From<Precision> for candle_core::DType {
    fn from(p: Precision) -> Self {
        match p {
            Precision::F32 => candle_core::DType::F32,
            Precision::Bf16 => candle_core::DType::BF16,
            Precision::F16 => candle_core::DType::F16,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_display_and_serde_round_trip() {
        for s in ["cpu", "cuda:0", "cuda:3"] {
            assert_eq!(s.parse::<DeviceSpec>().unwrap().to_string(), s);
        }
        assert_eq!("cuda".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(0)));
        assert!("gpu".parse::<DeviceSpec>().unwrap_err().contains("gpu"));
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert_eq!("bf16".parse::<Precision>(), Ok(Precision::Bf16));
        assert!("f64".parse::<Precision>().unwrap_err().contains("f64"));
        #[derive(Serialize, Deserialize)]
        struct T {
            d: DeviceSpec,
            p: Precision,
        }
        let t: T = toml::from_str("d = \"cuda:1\"\np = \"f16\"").unwrap();
        assert_eq!((t.d, t.p), (DeviceSpec::Cuda(1), Precision::F16));
        assert_eq!(
            toml::to_string(&t).unwrap(),
            "d = \"cuda:1\"\np = \"f16\"\n"
        );
        assert!(toml::from_str::<T>("d = \"tpu\"\np = \"f32\"").is_err());
    }
}
