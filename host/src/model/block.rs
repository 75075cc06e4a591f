//! The Transformer block (design.md §1): h = x + Attention(RMSNorm(x)); out = h + FeedForward(RMSNorm(h)).
//! Attention: wq wk wv wo without bias, grouped-query, causal, scale 1/√head_dim, interleaved RoPE.
//! FeedForward: w2(silu(w1·x) ⊙ w3·x).

use super::forward_ctx::ForwardCtx;
use super::lora::LoraLinear;
use super::norm::RmsNorm;
use super::param::{Param, ParamGroup, VisitParams};
use super::rope::Rope;
use super::weight_map::WeightMap;
use super::ModelArgs;
use crate::kernels;
pub use crate::kernels::attention::causal_mask;
use crate::kernels::Kernels;
use anyhow::Result;
use candle_core::{DType, Tensor, D};

/// Causal self-attention with grouped-query key/value heads.
#[derive(Debug, Clone)]
pub struct Attention {
    /// Query projection [n_heads·hd, dim].
    pub wq: LoraLinear,
    /// Key projection [n_kv_heads·hd, dim].
    pub wk: LoraLinear,
    /// Value projection [n_kv_heads·hd, dim].
    pub wv: LoraLinear,
    /// Output projection [dim, n_heads·hd].
    pub wo: LoraLinear,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    /// Fused kernels or plain ops (the model's, [`crate::model::Transformer::set_kernels`]).
    pub kernels: Kernels,
}

/// SwiGLU feed-forward: w2(silu(w1·x) ⊙ w3·x).
#[derive(Debug, Clone)]
pub struct FeedForward {
    /// Gate projection [hidden, dim].
    pub w1: LoraLinear,
    /// Down projection [dim, hidden].
    pub w2: LoraLinear,
    /// Up projection [hidden, dim].
    pub w3: LoraLinear,
    /// Fused kernels or plain ops (the model's).
    pub kernels: Kernels,
}

/// One pre-norm Transformer block.
#[derive(Debug, Clone)]
pub struct TransformerBlock {
    /// Self-attention.
    pub attention: Attention,
    /// Feed-forward.
    pub feed_forward: FeedForward,
    /// Norm before attention.
    pub attention_norm: RmsNorm,
    /// Norm before the feed-forward.
    pub ffn_norm: RmsNorm,
}

impl Attention {
    /// (query heads, key/value heads, head dim).
    pub fn heads(&self) -> (usize, usize, usize) {
        (self.n_heads, self.n_kv_heads, self.head_dim)
    }

    /// x [B, T, dim] → [B, T, dim].
    pub fn forward(
        &self,
        x: &Tensor,
        rope: &Rope,
        mask: &Tensor,
        ctx: &ForwardCtx,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (nh, nkv, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let q = rope.apply(
            self.kernels,
            &self.wq.forward(x, ctx)?.reshape((b, t, nh, hd))?,
        )?;
        let k = rope.apply(
            self.kernels,
            &self.wk.forward(x, ctx)?.reshape((b, t, nkv, hd))?,
        )?;
        let v = self.wv.forward(x, ctx)?.reshape((b, t, nkv, hd))?;
        if self.kernels.fuse(x.device(), x.dtype()) && kernels::attention::supported(x.dtype(), hd)
        {
            // flash-style kernel: causal by construction (`mask` is the causal mask on this path too)
            let out = kernels::attention(&q, &k, &v)?.reshape((b, t, nh * hd))?;
            return self.wo.forward(&out, ctx);
        }
        // [B, n_kv, rep·T, hd] grouping: query heads of one kv head are stacked along the time axis, so
        // keys and values are shared without copying them rep times.
        let rep = nh / nkv;
        let q = q
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, nkv, rep * t, hd))?;
        let k = k.transpose(1, 2)?.contiguous()?;
        let v = v.transpose(1, 2)?.contiguous()?;
        let scores = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?.to_dtype(DType::F32)?;
        let scores = scores
            .reshape((b, nkv, rep, t, t))?
            .broadcast_add(&mask.reshape((1, 1, 1, t, t))?)?;
        // softmax; the max is a constant shift, so it carries no gradient
        let max = scores.max_keepdim(D::Minus1)?.detach();
        let e = scores.broadcast_sub(&max)?.exp()?;
        let p = e
            .broadcast_div(&e.sum_keepdim(D::Minus1)?)?
            .to_dtype(x.dtype())?;
        let out = p.reshape((b, nkv, rep * t, t))?.matmul(&v)?; // [B, nkv, rep·T, hd]
        let out = out
            .reshape((b, nh, t, hd))?
            .transpose(1, 2)?
            .reshape((b, t, nh * hd))?;
        self.wo.forward(&out, ctx)
    }
}

impl FeedForward {
    /// w2(silu(w1·x) ⊙ w3·x).
    pub fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let (a, b) = (self.w1.forward(x, ctx)?, self.w3.forward(x, ctx)?);
        self.w2
            .forward(&kernels::swiglu::gate(self.kernels, &a, &b)?, ctx)
    }
}

impl TransformerBlock {
    /// Sets the kernels of every module of the block ([`crate::model::Transformer::set_kernels`]).
    pub fn set_kernels(&mut self, k: Kernels) {
        let (at, ff) = (&mut self.attention, &mut self.feed_forward);
        at.kernels = k;
        ff.kernels = k;
        for l in [&mut at.wq, &mut at.wk, &mut at.wv, &mut at.wo] {
            l.kernels = k;
        }
        for l in [&mut ff.w1, &mut ff.w2, &mut ff.w3] {
            l.kernels = k;
        }
        self.attention_norm.kernels = k;
        self.ffn_norm.kernels = k;
    }

    /// Builds a block from `weights` under `prefix` (e.g. `layers.3.`), all parameters frozen.
    pub fn load(
        w: &mut WeightMap,
        prefix: &str,
        args: &ModelArgs,
        group: ParamGroup,
    ) -> Result<Self> {
        let (d, hd, f) = (args.dim, args.head_dim(), args.hidden_dim());
        let kv = args.kv_heads() * hd;
        let mut lin = |name: &str, shape: [usize; 2]| -> Result<LoraLinear> {
            let t = w.take(&format!("{prefix}{name}.weight"), &shape)?;
            Ok(LoraLinear::new(Param::frozen(t, group)))
        };
        let attention = Attention {
            wq: lin("attention.wq", [d, d])?,
            wk: lin("attention.wk", [kv, d])?,
            wv: lin("attention.wv", [kv, d])?,
            wo: lin("attention.wo", [d, d])?,
            n_heads: args.n_heads,
            n_kv_heads: args.kv_heads(),
            head_dim: hd,
            kernels: Kernels::default(),
        };
        let feed_forward = FeedForward {
            w1: lin("feed_forward.w1", [f, d])?,
            w2: lin("feed_forward.w2", [d, f])?,
            w3: lin("feed_forward.w3", [f, d])?,
            kernels: Kernels::default(),
        };
        let mut norm = |name: &str| -> Result<RmsNorm> {
            let t = w.take(&format!("{prefix}{name}.weight"), &[d])?;
            Ok(RmsNorm {
                weight: Param::frozen(t, group),
                eps: args.norm_eps,
                kernels: Kernels::default(),
            })
        };
        Ok(TransformerBlock {
            attention,
            feed_forward,
            attention_norm: norm("attention_norm")?,
            ffn_norm: norm("ffn_norm")?,
        })
    }

    /// x [B, T, dim] → [B, T, dim].
    pub fn forward(
        &self,
        x: &Tensor,
        rope: &Rope,
        mask: &Tensor,
        ctx: &ForwardCtx,
    ) -> Result<Tensor> {
        let h = (x + self
            .attention
            .forward(&self.attention_norm.forward(x)?, rope, mask, ctx)?)?;
        Ok((&h
            + self
                .feed_forward
                .forward(&self.ffn_norm.forward(&h)?, ctx)?)?)
    }

    /// The block's seven linear layers by target name (wq wk wv wo w1 w2 w3).
    pub fn linears_mut(&mut self) -> [(&'static str, &mut LoraLinear); 7] {
        let a = &mut self.attention;
        let f = &mut self.feed_forward;
        [
            ("wq", &mut a.wq),
            ("wk", &mut a.wk),
            ("wv", &mut a.wv),
            ("wo", &mut a.wo),
            ("w1", &mut f.w1),
            ("w2", &mut f.w2),
            ("w3", &mut f.w3),
        ]
    }
}

impl VisitParams for TransformerBlock {
    fn visit(&self, p: &str, f: &mut dyn FnMut(&str, &Param)) {
        let a = &self.attention;
        let ff = &self.feed_forward;
        for (name, l) in [("wq", &a.wq), ("wk", &a.wk), ("wv", &a.wv), ("wo", &a.wo)] {
            l.visit(&format!("{p}attention.{name}."), f);
        }
        for (name, l) in [("w1", &ff.w1), ("w2", &ff.w2), ("w3", &ff.w3)] {
            l.visit(&format!("{p}feed_forward.{name}."), f);
        }
        self.attention_norm.visit(&format!("{p}attention_norm."), f);
        self.ffn_norm.visit(&format!("{p}ffn_norm."), f);
    }

    fn visit_mut(&mut self, p: &str, f: &mut dyn FnMut(&str, &mut Param)) {
        for (name, l) in self.linears_mut() {
            let part = if matches!(name, "wq" | "wk" | "wv" | "wo") {
                "attention"
            } else {
                "feed_forward"
            };
            l.visit_mut(&format!("{p}{part}.{name}."), f);
        }
        self.attention_norm
            .visit_mut(&format!("{p}attention_norm."), f);
        self.ffn_norm.visit_mut(&format!("{p}ffn_norm."), f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causal_mask_is_zero_on_and_below_the_diagonal_and_minus_infinity_above() -> Result<()> {
        let t = 5;
        let m = causal_mask(t, &candle_core::Device::Cpu)?.to_vec2::<f32>()?;
        for (i, row) in m.iter().enumerate() {
            for (j, &v) in row.iter().enumerate() {
                let want = if j > i { f32::NEG_INFINITY } else { 0.0 };
                assert_eq!(v, want, "[{i}, {j}]");
            }
        }
        Ok(())
    }
}
