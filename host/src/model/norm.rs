//! RMSNorm: y = x / √(mean(x²) + ε) · weight, computed in f32 and cast back before the weight (as Meta).

use super::param::{Param, VisitParams};
use crate::kernels::Kernels;
use candle_core::{Result, Tensor};

/// Root-mean-square normalisation over the last dimension, with a learned per-feature weight.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    /// Per-feature gain [dim].
    pub weight: Param,
    /// ε added to the mean square.
    pub eps: f64,
    /// Fused kernel or plain ops ([`Kernels`]; the model's, set by `Transformer::set_kernels`).
    pub kernels: Kernels,
}

impl RmsNorm {
    /// y = (x_f32 / √(mean(x_f32²) + ε)).to(x.dtype) · weight — one fused kernel where
    /// [`Kernels::fuse`] says so, else plain candle ops.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(x, self.weight.tensor())
    }

    /// [`RmsNorm::forward`] with no autograd edge to the weight (the engine's hand-written backward).
    pub fn forward_nograd(&self, x: &Tensor) -> Result<Tensor> {
        self.apply(&x.detach(), &self.weight.tensor().detach())
    }

    /// (dL/dx, dL/dweight when the weight is trained) for upstream gradient `dy`, no autograd.
    pub fn backward(&self, x: &Tensor, dy: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        crate::kernels::rms_norm::rms_norm_backward(
            self.kernels,
            x,
            self.weight.tensor(),
            dy,
            self.eps,
            self.weight.is_trainable(),
        )
    }

    /// [`RmsNorm::backward`] with `resid` (the gradient reaching x through the residual connection)
    /// added to dL/dx in the same kernel.
    pub fn backward_add(
        &self,
        x: &Tensor,
        dy: &Tensor,
        resid: &Tensor,
    ) -> Result<(Tensor, Option<Tensor>)> {
        crate::kernels::rms_norm::rms_norm_backward_add(
            self.kernels,
            x,
            self.weight.tensor(),
            dy,
            self.eps,
            self.weight.is_trainable(),
            Some(resid),
        )
    }

    fn apply(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        if self.kernels.fuse(x.device(), x.dtype()) {
            return crate::kernels::rms_norm(x, w, self.eps);
        }
        crate::kernels::rms_norm::rms_norm_plain(x, w, self.eps)
    }
}

impl VisitParams for RmsNorm {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param)) {
        f(&format!("{prefix}weight"), &self.weight);
    }
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param)) {
        f(&format!("{prefix}weight"), &mut self.weight);
    }
}
