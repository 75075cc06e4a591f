//! A matmul with a frozen weight whose backward computes only dL/dx.
//!
//! candle's `matmul` backward always computes both operands' gradients, so a frozen W (LoRA base, frozen
//! trunk) would still cost a full weight-gradient matmul (xᵀ·dy) per layer and a gradient tensor per
//! weight. `frozen_linear` runs y = x·Wᵀ as a custom op whose backward returns dL/dx = dy·W and nothing
//! for W.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

/// y = x · Wᵀ for a 2-D contiguous x [m, k] and W [n, k]; gradient flows to x only.
struct FrozenMatmul;

/// Matmul sizes (batch, m, n, k) for candle's backend.
type Bmnk = (usize, usize, usize, usize);

/// Sizes, Wᵀ's layout and the output shape of x [m, k] · W [n, k]ᵀ.
fn bmnk(l1: &Layout, l2: &Layout) -> Result<(Bmnk, Layout, Shape)> {
    let (m, k) = l1.shape().dims2()?;
    let (n, k2) = l2.shape().dims2()?;
    if k != k2 {
        candle_core::bail!("frozen_linear: x has {k} features, weight expects {k2}");
    }
    Ok(((1, m, n, k), l2.transpose(0, 1)?, Shape::from((m, n))))
}

impl CustomOp2 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (bmnk, wt, shape) = bmnk(l1, l2)?;
        Ok((s1.matmul(s2, bmnk, l1, &wt)?, shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (bmnk, wt, shape) = bmnk(l1, l2)?;
        Ok((s1.matmul(s2, bmnk, l1, &wt)?, shape))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.matmul(w)?), None))
    }
}

/// y = x · Wᵀ with W frozen: x [..., in], W [out, in] → y [..., out]; backward yields dL/dx only.
pub fn frozen_linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let Some((&k, lead)) = dims.split_last() else {
        candle_core::bail!("frozen_linear: x must have a feature dimension");
    };
    let m: usize = lead.iter().product();
    let x2 = x.reshape((m, k))?.contiguous()?;
    // W is detached, so candle records a backward edge to x only (and only when x needs one).
    let y = x2.apply_op2(&w.detach(), FrozenMatmul)?;
    let mut out = lead.to_vec();
    out.push(w.dim(0)?);
    y.reshape(out)
}

/// y = x · Wᵀ with W trainable (ordinary autograd: dL/dx and dL/dW).
pub fn trainable_linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.broadcast_matmul(&w.t()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn frozen_linear_matches_matmul_and_skips_weight_grad() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 5), &dev)?)?;
        let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (4, 5), &dev)?)?;
        let y_ref = trainable_linear(x.as_tensor(), w.as_tensor())?;
        let y = frozen_linear(x.as_tensor(), w.as_tensor())?;
        let diff = (&y - &y_ref)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "forward differs by {diff}");

        let g_ref = (y_ref.sqr()?.sum_all()?).backward()?;
        let g = (y.sqr()?.sum_all()?).backward()?;
        let dx_ref = g_ref.get(x.as_tensor()).unwrap();
        let dx = g
            .get(x.as_tensor())
            .expect("dL/dx must flow through a frozen linear");
        let diff = (dx - dx_ref)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "dL/dx differs by {diff}");
        assert!(
            g_ref.get(w.as_tensor()).is_some(),
            "plain matmul does produce dL/dW"
        );
        assert!(
            g.get(w.as_tensor()).is_none(),
            "frozen weight must get no gradient tensor"
        );
        Ok(())
    }
}
