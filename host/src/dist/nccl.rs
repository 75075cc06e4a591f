//! The NCCL process group ([`NcclComm`], feature `nccl`): one rank per GPU, the collectives done by
//! NCCL on the rank's CUDA stream (candle's, so they queue behind the kernels that produce their
//! inputs). The NCCL unique id is created by rank 0 and handed to the others through the TCP
//! rendezvous ([`super::tcp::TcpComm`]), which stays open for nothing else.
//!
//! Tensors on the CPU (the plugins' sums, flags) are copied to the GPU and back. f32, f64 and bf16.

use super::Communicator;
use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, ReduceOp};
use candle_core::cuda_backend::{CudaDType, CudaDevice};
use candle_core::{bail, DType, Device, Result, Tensor};
use half::bf16;
use std::sync::Mutex;

/// One rank's NCCL communicator.
pub struct NcclComm {
    comm: Mutex<Comm>,
    dev: CudaDevice,
    device: Device,
    rank: usize,
    world: usize,
}

// SAFETY: the NCCL communicator is a handle used by one thread at a time (the mutex); NCCL allows a
// communicator to be used from any thread as long as calls on it are not concurrent.
unsafe impl Send for NcclComm {}
// SAFETY: see `Send`: every use goes through the mutex.
unsafe impl Sync for NcclComm {}

impl std::fmt::Debug for NcclComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NcclComm(rank {} of {})", self.rank, self.world)
    }
}

fn nccl_err(what: &str, e: impl std::fmt::Debug) -> candle_core::Error {
    candle_core::Error::Msg(format!("NCCL {what}: {e:?}"))
}

impl NcclComm {
    /// Joins the NCCL group of `rendezvous`'s ranks on `device` (a CUDA device): rank 0 makes the id,
    /// the rendezvous broadcasts it, every rank initialises its communicator (which waits for all).
    pub fn connect(rendezvous: &dyn Communicator, device: &Device) -> Result<Self> {
        let Device::Cuda(dev) = device else {
            bail!("the NCCL backend needs a CUDA device, not {device:?}");
        };
        let (rank, world) = (rendezvous.rank(), rendezvous.world_size());
        let mine: Vec<u8> = if rank == 0 {
            let id = Id::new().map_err(|e| nccl_err("unique id", e))?;
            id.internal().iter().map(|&c| c as u8).collect()
        } else {
            vec![0u8; 128]
        };
        let shared = rendezvous.broadcast(&Tensor::new(mine.as_slice(), &Device::Cpu)?, 0)?;
        let bytes: Vec<u8> = shared.to_vec1()?;
        let mut internal = [0 as std::ffi::c_char; 128];
        for (d, s) in internal.iter_mut().zip(&bytes) {
            *d = *s as std::ffi::c_char;
        }
        let comm = Comm::from_rank(dev.cuda_stream(), rank, world, Id::uninit(internal))
            .map_err(|e| nccl_err("init", e))?;
        Ok(NcclComm {
            comm: Mutex::new(comm),
            dev: dev.clone(),
            device: device.clone(),
            rank,
            world,
        })
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Comm>> {
        self.comm
            .lock()
            .map_err(|_| candle_core::Error::Msg("NCCL: a thread panicked in a collective".into()))
    }

    /// `x` contiguous on this rank's GPU, and the device it came from.
    fn on_gpu(&self, x: &Tensor) -> Result<(Tensor, Device)> {
        Ok((x.to_device(&self.device)?.contiguous()?, x.device().clone()))
    }

    /// Runs `op(comm, input slice, output slice)` for a `dt` tensor, producing `out_len` elements.
    fn run(
        &self,
        x: &Tensor,
        out_len: usize,
        what: &str,
        op: &dyn Fn(&Comm, &Typed, &mut TypedOut) -> std::result::Result<(), String>,
    ) -> Result<Tensor> {
        let (g, home) = self.on_gpu(x)?;
        let held = crate::kernels::cuda::hold(&g);
        let (s, l) = held.cuda()?;
        let comm = self.lock()?;
        let out = match g.dtype() {
            DType::F32 => {
                let src = Typed::F32(crate::kernels::cuda::view::<f32>(s, l)?);
                let mut dst = TypedOut::F32(self.dev.alloc_zeros::<f32>(out_len)?);
                op(&comm, &src, &mut dst).map_err(|e| nccl_err(what, e))?;
                dst.wrap(&self.dev)
            }
            DType::F64 => {
                let src = Typed::F64(crate::kernels::cuda::view::<f64>(s, l)?);
                let mut dst = TypedOut::F64(self.dev.alloc_zeros::<f64>(out_len)?);
                op(&comm, &src, &mut dst).map_err(|e| nccl_err(what, e))?;
                dst.wrap(&self.dev)
            }
            DType::BF16 => {
                let src = Typed::Bf16(crate::kernels::cuda::view::<bf16>(s, l)?);
                let mut dst = TypedOut::Bf16(self.dev.alloc_zeros::<bf16>(out_len)?);
                op(&comm, &src, &mut dst).map_err(|e| nccl_err(what, e))?;
                dst.wrap(&self.dev)
            }
            other => bail!("NCCL {what}: {other:?} tensors are not supported (f32, f64, bf16)"),
        };
        drop(comm);
        out.to_device(&home)
    }
}

/// An input buffer of one of the supported dtypes.
enum Typed<'a> {
    F32(candle_core::cuda_backend::cudarc::driver::CudaView<'a, f32>),
    F64(candle_core::cuda_backend::cudarc::driver::CudaView<'a, f64>),
    Bf16(candle_core::cuda_backend::cudarc::driver::CudaView<'a, bf16>),
}

/// An output buffer of one of the supported dtypes.
enum TypedOut {
    F32(candle_core::cuda_backend::cudarc::driver::CudaSlice<f32>),
    F64(candle_core::cuda_backend::cudarc::driver::CudaSlice<f64>),
    Bf16(candle_core::cuda_backend::cudarc::driver::CudaSlice<bf16>),
}

impl TypedOut {
    fn wrap(self, dev: &CudaDevice) -> Tensor {
        fn w<T: CudaDType>(
            s: candle_core::cuda_backend::cudarc::driver::CudaSlice<T>,
            dev: &CudaDevice,
        ) -> Tensor {
            let n = s.len();
            crate::kernels::cuda::wrap(s, dev, n)
        }
        match self {
            TypedOut::F32(s) => w(s, dev),
            TypedOut::F64(s) => w(s, dev),
            TypedOut::Bf16(s) => w(s, dev),
        }
    }
}

/// Applies one NCCL call to matching input and output buffers.
macro_rules! typed {
    ($src:expr, $dst:expr, |$s:ident, $d:ident| $call:expr) => {
        match ($src, $dst) {
            (Typed::F32($s), TypedOut::F32($d)) => $call.map(|_| ()),
            (Typed::F64($s), TypedOut::F64($d)) => $call.map(|_| ()),
            (Typed::Bf16($s), TypedOut::Bf16($d)) => $call.map(|_| ()),
            _ => return Err("input and output dtypes differ".to_string()),
        }
        .map_err(|e| format!("{e:?}"))
    };
}

impl Communicator for NcclComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&self, x: &Tensor) -> Result<Tensor> {
        let n = x.elem_count();
        let out = self.run(&x.flatten_all()?, n, "all_reduce", &|c, s, d| {
            typed!(s, d, |s, d| c.all_reduce(s, d, &ReduceOp::Sum))
        })?;
        out.reshape(x.dims())
    }

    fn all_gather(&self, shard: &Tensor) -> Result<Tensor> {
        if shard.rank() != 1 {
            bail!("all_gather: shards must be 1-D");
        }
        let n = shard.elem_count() * self.world;
        self.run(shard, n, "all_gather", &|c, s, d| {
            typed!(s, d, |s, d| c.all_gather(s, d))
        })
    }

    fn reduce_scatter_sum(&self, full: &Tensor) -> Result<Tensor> {
        let n = full.elem_count();
        if full.rank() != 1 || !n.is_multiple_of(self.world) {
            bail!(
                "reduce_scatter_sum: a 1-D tensor whose length ({n}) is a multiple of {} is needed",
                self.world
            );
        }
        self.run(full, n / self.world, "reduce_scatter", &|c, s, d| {
            typed!(s, d, |s, d| c.reduce_scatter(s, d, &ReduceOp::Sum))
        })
    }

    fn broadcast(&self, x: &Tensor, root: usize) -> Result<Tensor> {
        if root >= self.world {
            bail!("broadcast: root {root} outside a group of {}", self.world);
        }
        let n = x.elem_count();
        let out = self.run(&x.flatten_all()?, n, "broadcast", &|c, s, d| {
            typed!(s, d, |s, d| c.broadcast(Some(s), d, root as i32))
        })?;
        out.reshape(x.dims())
    }

    fn barrier(&self) -> Result<()> {
        let one = Tensor::ones(1, DType::F32, &self.device)?;
        self.all_reduce_sum(&one)?;
        self.device.synchronize()?;
        Ok(())
    }
}
