//! RMSNorm: y = x / √(mean(x²) + ε) · weight, computed in f32 and cast back before the weight (as Meta).

use super::param::{Param, VisitParams};
use candle_core::{DType, Result, Tensor, D};

/// Root-mean-square normalisation over the last dimension, with a learned per-feature weight.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    /// Per-feature gain [dim].
    pub weight: Param,
    /// ε added to the mean square.
    pub eps: f64,
}

impl RmsNorm {
    /// y = (x_f32 / √(mean(x_f32²) + ε)).to(x.dtype) · weight.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let xf = x.to_dtype(DType::F32)?;
        let ms = xf.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = xf
            .broadcast_div(&(ms + self.eps)?.sqrt()?)?
            .to_dtype(x.dtype())?;
        normed.broadcast_mul(&self.weight.tensor().to_dtype(x.dtype())?)
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
