//! Multi-tensor AdamW and gradient norm on CUDA: one launch updates every trainable tensor of a module
//! (instead of ~10 elementwise kernels and a host round-trip per tensor), reading a table of device
//! pointers. Per element, with g scaled by the clipping factor:
//!   m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²;  p ← p − lr·(m/c₁ / (√(v/c₂) + ε) + wd·p)
//! on the f32 master p (the parameter itself when it is f32), then the bf16 compute copy is rewritten
//! from it. The CPU (and the fallback) path is `optim::AdamW::update`, which the GPU suite compares
//! against (tests/gpu.rs, 20 steps CPU vs CUDA to 1e-5).

use candle_core::Tensor;

/// One tensor's AdamW update: the f32 master (or the f32 parameter), its bf16 compute copy (None for an
/// f32 parameter), its f32 gradient, f32 moments, learning rate and decoupled weight decay.
pub struct AdamSlot<'a> {
    /// f32 values updated in place.
    pub master: &'a Tensor,
    /// bf16 parameter rewritten from the master, when the compute dtype is bf16.
    pub copy: Option<&'a Tensor>,
    /// f32 gradient.
    pub grad: &'a Tensor,
    /// First moment (f32), updated in place.
    pub m: &'a Tensor,
    /// Second moment (f32), updated in place.
    pub v: &'a Tensor,
    /// Learning rate of this step.
    pub lr: f32,
    /// Decoupled weight decay (0 for 1-D tensors).
    pub wd: f32,
}

/// AdamW constants of one step: β₁, β₂, ε, the bias corrections c₁ = 1−β₁ᵗ, c₂ = 1−β₂ᵗ and the factor
/// every gradient is multiplied by (clipping).
#[derive(Debug, Clone, Copy)]
pub struct AdamStep {
    /// β₁.
    pub b1: f32,
    /// β₂.
    pub b2: f32,
    /// ε.
    pub eps: f32,
    /// 1 − β₁ᵗ.
    pub c1: f32,
    /// 1 − β₂ᵗ.
    pub c2: f32,
    /// Gradient scale (clipping factor).
    pub gscale: f32,
}

#[cfg(feature = "cuda")]
mod imp {
    use super::{AdamSlot, AdamStep};
    use crate::kernels::cuda::{hold, launch, view};
    use candle_core::cuda_backend::cudarc::driver::{DevicePtr, LaunchConfig};
    use candle_core::{bail, DType, Result, Tensor};

    /// The CUDA struct `AdamEntry` of kernels/fused.cu.
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Entry {
        p: u64,
        g: u64,
        m: u64,
        v: u64,
        copy: u64,
        n: i64,
        lr: f32,
        wd: f32,
        g_bf16: i32,
        pad: i32,
    }
    // SAFETY: plain old data, laid out as the CUDA struct.
    unsafe impl candle_core::cuda_backend::cudarc::driver::DeviceRepr for Entry {}

    /// The device address of a contiguous f32/bf16 tensor's first element.
    fn addr(t: &Tensor, dt: DType) -> Result<(u64, usize)> {
        if t.dtype() != dt || !t.is_contiguous() {
            bail!(
                "adamw: expected a contiguous {dt:?} tensor, got {:?}",
                t.dtype()
            );
        }
        let h = hold(t);
        let (s, l) = h.cuda()?;
        let stream = s.device.cuda_stream();
        let n = l.shape().elem_count();
        let p = match dt {
            DType::F32 => view::<f32>(s, l)?.device_ptr(&stream).0,
            _ => view::<half::bf16>(s, l)?.device_ptr(&stream).0,
        };
        Ok((p, n))
    }

    fn table(slots: &[AdamSlot]) -> Result<(Vec<Entry>, usize)> {
        let mut out = Vec::with_capacity(slots.len());
        let mut most = 0;
        for s in slots {
            let (p, n) = addr(s.master, DType::F32)?;
            let (g, ng) = addr(s.grad, DType::F32)?;
            let (m, nm) = addr(s.m, DType::F32)?;
            let (v, nv) = addr(s.v, DType::F32)?;
            let copy = match s.copy {
                Some(c) => {
                    let (c, nc) = addr(c, DType::BF16)?;
                    if nc != n {
                        bail!("adamw: copy has {nc} elements, master {n}");
                    }
                    c
                }
                None => 0,
            };
            if (ng, nm, nv) != (n, n, n) {
                bail!("adamw: sizes differ ({n}, {ng}, {nm}, {nv})");
            }
            most = most.max(n);
            out.push(Entry {
                p,
                g,
                m,
                v,
                copy,
                n: n as i64,
                lr: s.lr,
                wd: s.wd,
                ..Default::default()
            });
        }
        Ok((out, most))
    }

    /// (start, len) of the table in pieces of at most 65,535 tensors (the grid's y limit).
    fn chunks(n: usize) -> impl Iterator<Item = (usize, usize)> {
        (0..n).step_by(65535).map(move |s| (s, (n - s).min(65535)))
    }

    fn cfg(tensors: usize, most: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (most.div_ceil(1024).clamp(1, 512) as u32, tensors as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// Updates every slot in one launch (slots must be on one CUDA device).
    pub fn adamw_step(slots: &[AdamSlot], k: AdamStep) -> Result<()> {
        if slots.is_empty() {
            return Ok(());
        }
        let (entries, most) = table(slots)?;
        let h = hold(slots[0].master);
        let dev = &h.cuda()?.0.device;
        let tab = dev
            .cuda_stream()
            .clone_htod(&entries)
            .map_err(crate::kernels::cuda::err)?;
        for (start, len) in chunks(entries.len()) {
            let part = tab.slice(start..start + len);
            launch!(dev, "adamw_multi", cfg(len, most);
                &part, &k.b1, &k.b2, &k.eps, &k.c1, &k.c2, &k.gscale);
        }
        Ok(())
    }

    /// Σ g² over f32 tensors on one CUDA device: one launch and one copy to the host.
    pub fn sum_squares(grads: &[&Tensor]) -> Result<f64> {
        if grads.is_empty() {
            return Ok(0.0);
        }
        let mut entries = Vec::with_capacity(grads.len());
        let mut most = 0;
        for g in grads {
            let (p, n) = addr(g, DType::F32)?;
            most = most.max(n);
            entries.push(Entry {
                g: p,
                n: n as i64,
                ..Default::default()
            });
        }
        let h = hold(grads[0]);
        let dev = &h.cuda()?.0.device;
        let stream = dev.cuda_stream();
        let tab = stream
            .clone_htod(&entries)
            .map_err(crate::kernels::cuda::err)?;
        let out = dev.alloc_zeros::<f32>(1)?;
        for (start, len) in chunks(entries.len()) {
            let part = tab.slice(start..start + len);
            launch!(dev, "sumsq_multi", cfg(len, most); &part, &out);
        }
        let v = stream.clone_dtoh(&out).map_err(crate::kernels::cuda::err)?;
        Ok(v[0] as f64)
    }
}

#[cfg(feature = "cuda")]
pub use imp::{adamw_step, sum_squares};
