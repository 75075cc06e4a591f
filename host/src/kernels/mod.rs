//! Fused kernels for the GPU (`kernels/fused.cu`, compiled to PTX by `build.rs` with the `cuda` feature),
//! each a candle custom op with a CPU twin of the same maths so that it can be tested against the plain
//! candle path on both devices (tests/gpu_kernels.rs on the GPU, the unit tests here on the CPU):
//! - [`rms_norm`]: y = bf(bf(x·r)·w), r = 1/√(mean(x²) + ε); backward dx = r·(g − n·mean(g·n)), g = dy·w.
//! - [`rope`]: interleaved-pair rotation; backward = rotation by −θ.
//! - [`swiglu`]: silu(a)·b; backward da = dy·b·σ(a)(1 + a(1 − σ(a))), db = dy·silu(a).
//! - [`cross_entropy`]: per-row CE = logsumexp(z) − z[target] in f32 from bf16/f32 logits; backward
//!   dz = dCE·(softmax(z) − onehot), written straight in the logits' dtype.
//! - [`attention`]: causal grouped-query attention, flash-style: [T, T] scores never stored; the
//!   log-sum-exp is kept for the backward (bf16, head_dim 64 or 128, tensor-core mma).
//! - [`add`]: a + b in one vectorised kernel (residuals, adapter terms, gradient sums).
//! - [`matmul_acc`]: acc + a·b(ᵀ) with the sum in the product's epilogue (LoRA's adapter terms).
//! - [`scatter_rows`]: rows back to their positions (replaces candle's slow CUDA `index_add`).
//! - [`dropout::dropout_mask`]: inverted-dropout masks from a counter-based hash, drawn on the device.
//! - [`sample::sample_rows`]: a token per row drawn from softmax(z/T) cut to top-k and top-p, on the
//!   logits' device (only a uniform number per row in, a token id per row out).
//! - [`adamw`]: one launch of AdamW (f32 masters and moments) and one of Σg² for all trainable tensors.
//!
//! The model uses them where [`Kernels::fuse`] says so: on CUDA for f32/bf16 unless the model's
//! [`Kernels`] is `Plain` (`runtime.fused_kernels = false`); on the CPU the plain candle path runs (it is
//! faster there).

pub mod adamw;
pub mod add;
pub mod attention;
#[cfg(feature = "cuda")]
mod attention_cuda_bwd;
#[cfg(feature = "cuda")]
mod attention_cuda_fwd;
mod cpu;
pub mod cross_entropy;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
pub mod dropout;
pub mod matmul_acc;
pub mod rms_norm;
pub mod rope;
pub mod sample;
pub mod scatter;
pub mod swiglu;
#[cfg(feature = "cuda")]
mod tensor_map;

pub use add::add;
pub use attention::attention;
pub use cross_entropy::cross_entropy_rows;
pub use matmul_acc::matmul_acc;
pub use rms_norm::rms_norm;
pub use rope::rope;
pub use scatter::scatter_rows;
pub use swiglu::swiglu;

use candle_core::{DType, Device};

/// Which implementation the model's tensor ops take (`runtime.fused_kernels`): the fused kernels where
/// they apply (CUDA, f32 or bf16), or plain candle ops everywhere. A value that each model
/// (`Transformer::set_kernels`), forward context and optimiser carries — not a
/// process-wide switch — so two models in one process (a run and its Rho-1 reference stage, or tests
/// running side by side) each keep their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kernels {
    /// The fused kernels where they apply (the default).
    #[default]
    Fused,
    /// Plain candle ops (the reference the fused kernels are tested against).
    Plain,
}

impl Kernels {
    /// `Fused` when `on` (the config flag), else `Plain`.
    pub fn from_flag(on: bool) -> Self {
        if on {
            Kernels::Fused
        } else {
            Kernels::Plain
        }
    }

    /// Whether tensors of `dtype` on `dev` take the fused path: CUDA, f32 or bf16, and `Fused`.
    pub fn fuse(self, dev: &Device, dtype: DType) -> bool {
        self == Kernels::Fused && dev.is_cuda() && matches!(dtype, DType::F32 | DType::BF16)
    }
}
