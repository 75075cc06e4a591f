//! The NCCL process group ([`NcclComm`], feature `nccl`): one rank per GPU, the collectives done by
//! NCCL on the rank's CUDA stream (candle's, so they queue behind the kernels that produce their
//! inputs). The NCCL unique id is created by rank 0 and handed to the others through the TCP
//! rendezvous ([`super::tcp::TcpComm`]), which stays open for nothing else.
//!
//! Tensors on the CPU (the plugins' sums, flags) are copied to the GPU and back. f32, f64 and bf16.
//!
//! A second communicator on a second stream (the "ahead" stream) runs the all-gathers FSDP issues
//! ahead of use ([`Communicator::all_gather_ahead`]), so the next unit's weights travel while the current
//! unit computes. Streams are ordered by events, by hand: candle's per-use event tracking is switched
//! off for the device (it only matters with several streams, and it would record events at every
//! kernel launch); the ahead stream waits for the compute stream before each gather, and the compute
//! stream waits for the ahead stream at [`Communicator::join_ahead`]. Outputs are allocated on the
//! compute stream (before the wait), so they are freed there, after the join.

use super::Communicator;
use candle_core::cuda_backend::cudarc::driver::CudaStream;
use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, ReduceOp};
use candle_core::cuda_backend::{CudaDType, CudaDevice};
use candle_core::{bail, DType, Device, Result, Tensor};
use half::bf16;
use std::sync::{Arc, Mutex};

/// One rank's NCCL communicator.
pub struct NcclComm {
    comm: Mutex<Comm>,
    /// The gathers issued ahead: their communicator and stream.
    ahead: Mutex<Comm>,
    ahead_stream: Arc<CudaStream>,
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
        // two ids: the main communicator's and the ahead one's
        let mine: Vec<u8> = if rank == 0 {
            let mut v = Vec::with_capacity(256);
            for _ in 0..2 {
                let id = Id::new().map_err(|e| nccl_err("unique id", e))?;
                v.extend(id.internal().iter().map(|&c| c as u8));
            }
            v
        } else {
            vec![0u8; 256]
        };
        let shared = rendezvous.broadcast(&Tensor::new(mine.as_slice(), &Device::Cpu)?, 0)?;
        let bytes: Vec<u8> = shared.to_vec1()?;
        let id = |k: usize| {
            let mut internal = [0 as std::ffi::c_char; 128];
            for (d, s) in internal.iter_mut().zip(&bytes[k * 128..(k + 1) * 128]) {
                *d = *s as std::ffi::c_char;
            }
            Id::uninit(internal)
        };
        // SAFETY: no stream of this device but candle's has run anything yet, and every later
        // cross-stream use is ordered by the events of `all_gather_ahead` / `join_ahead`.
        unsafe { dev.disable_event_tracking() };
        let ahead_stream = dev
            .cuda_stream()
            .context()
            .new_stream()
            .map_err(|e| nccl_err("second stream", e))?;
        let comm = Comm::from_rank(dev.cuda_stream(), rank, world, id(0))
            .map_err(|e| nccl_err("init", e))?;
        let ahead = Comm::from_rank(ahead_stream.clone(), rank, world, id(1))
            .map_err(|e| nccl_err("init (second stream)", e))?;
        Ok(NcclComm {
            comm: Mutex::new(comm),
            ahead: Mutex::new(ahead),
            ahead_stream,
            dev: dev.clone(),
            device: device.clone(),
            rank,
            world,
        })
    }

    /// The main (`ahead` false) or the ahead communicator, locked.
    fn lock(&self, ahead: bool) -> Result<std::sync::MutexGuard<'_, Comm>> {
        let m = if ahead { &self.ahead } else { &self.comm };
        m.lock()
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
        self.run_on(x, out_len, what, false, op)
    }

    /// [`NcclComm::run`] on the main communicator, or (`ahead`) on the ahead one after making its
    /// stream wait for the compute stream (the output is allocated on the compute stream first).
    fn run_on(
        &self,
        x: &Tensor,
        out_len: usize,
        what: &str,
        ahead: bool,
        op: &dyn Fn(&Comm, &Typed, &mut TypedOut) -> std::result::Result<(), String>,
    ) -> Result<Tensor> {
        let (g, home) = self.on_gpu(x)?;
        let held = crate::kernels::cuda::hold(&g);
        let (s, l) = held.cuda()?;
        let comm = self.lock(ahead)?;
        let dst_of = |dt: DType| -> Result<TypedOut> {
            let out = match dt {
                DType::F32 => TypedOut::F32(self.dev.alloc_zeros::<f32>(out_len)?),
                DType::F64 => TypedOut::F64(self.dev.alloc_zeros::<f64>(out_len)?),
                DType::BF16 => TypedOut::Bf16(self.dev.alloc_zeros::<bf16>(out_len)?),
                other => bail!("NCCL {what}: {other:?} tensors are not supported (f32, f64, bf16)"),
            };
            if ahead {
                let ev = self
                    .dev
                    .cuda_stream()
                    .record_event(None)
                    .map_err(|e| nccl_err(what, e))?;
                self.ahead_stream.wait(&ev).map_err(|e| nccl_err(what, e))?;
            }
            Ok(out)
        };
        let out = match g.dtype() {
            DType::F32 => {
                let src = Typed::F32(crate::kernels::cuda::view::<f32>(s, l)?);
                let mut dst = dst_of(DType::F32)?;
                op(&comm, &src, &mut dst).map_err(|e| nccl_err(what, e))?;
                dst.wrap(&self.dev)
            }
            DType::F64 => {
                let src = Typed::F64(crate::kernels::cuda::view::<f64>(s, l)?);
                let mut dst = dst_of(DType::F64)?;
                op(&comm, &src, &mut dst).map_err(|e| nccl_err(what, e))?;
                dst.wrap(&self.dev)
            }
            DType::BF16 => {
                let src = Typed::Bf16(crate::kernels::cuda::view::<bf16>(s, l)?);
                let mut dst = dst_of(DType::BF16)?;
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

    fn gathers_ahead(&self) -> bool {
        true
    }

    fn all_gather_ahead(&self, shard: &Tensor) -> Result<Tensor> {
        // a copy made here would be freed on the compute stream while the ahead stream reads it
        if shard.rank() != 1 || !shard.is_contiguous() || !matches!(shard.device(), Device::Cuda(_))
        {
            bail!("all_gather_ahead: shards must be 1-D, contiguous and on this rank's GPU");
        }
        // a shard on another handle of the GPU would be copied here, behind the compute stream's back
        if !shard.device().same_device(&self.device) {
            bail!("all_gather_ahead: the shard is on another CUDA device handle than the communicator");
        }
        let n = shard.elem_count() * self.world;
        self.run_on(shard, n, "all_gather (ahead)", true, &|c, s, d| {
            typed!(s, d, |s, d| c.all_gather(s, d))
        })
    }

    fn join_ahead(&self) -> Result<()> {
        let ev = self
            .ahead_stream
            .record_event(None)
            .map_err(|e| nccl_err("join", e))?;
        self.dev
            .cuda_stream()
            .wait(&ev)
            .map_err(|e| nccl_err("join", e))
    }
}
