//! A Transformer block's backward written out by hand (no candle autograd): the engine's unit of work.
//!
//! candle's autograd adds every gradient into a fresh zero tensor and keeps f32 copies along the graph;
//! on the GPU that bookkeeping costs more than the block's matmuls. Here the forward keeps exactly the
//! activations the backward needs ([`BlockSaved`]) and the backward applies each piece's derivative:
//!
//!   n₁ = rms(x)·g₁; q = rope(n₁·Wqᵀ), k = rope(n₁·Wkᵀ), v = n₁·Wvᵀ; o = attn(q, k, v); h = x + o·Woᵀ
//!   n₂ = rms(h)·g₂; a = n₂·W1ᵀ, b = n₂·W3ᵀ; s = silu(a)·b; out = h + s·W2ᵀ
//! backward, given dout:
//!   ds = dout·W2; (da, db) = swiglu′; dn₂ = da·W1 + db·W3; dh = dout + rms′(h, dn₂)
//!   do = dh·Wo; (dq, dk, dv) = attn′; dn₁ = rope⁻¹(dq)·Wq + rope⁻¹(dk)·Wk + dv·Wv; dx = dh + rms′(x, dn₁)
//! with LoRA terms and weight gradients inside [`LoraLinear::backward`]. The pieces are the fused kernels
//! on the GPU and plain candle ops elsewhere (crate::kernels); `tests/engine_equivalence.rs` checks the
//! result against candle's autograd of [`TransformerBlock::forward`].

use super::block::TransformerBlock;
use super::forward_ctx::ForwardCtx;
use super::lora::{LinearSaved, LoraLinear};
use super::rope::Rope;
use crate::kernels;
use anyhow::Result;
use candle_core::Tensor;

/// The activations of one block's forward that its backward reads. The outputs of the two RMSNorms (n₁,
/// n₂) and of the SwiGLU product (s) are elementwise functions of tensors kept beside them: after
/// [`BlockSaved::drop_elementwise`] they are None and the backward recomputes them (selective
/// recomputation), with the same kernels, so the gradients are the same.
#[derive(Debug)]
pub struct BlockSaved {
    /// The block's input x [B, T, D].
    pub x: Tensor,
    /// Its output [B, T, D].
    pub out: Tensor,
    n1: Option<Tensor>,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    lse: Option<Tensor>,
    h: Tensor,
    n2: Option<Tensor>,
    a: Tensor,
    b: Tensor,
    s: Option<Tensor>,
    lin: [LinearSaved; 7],
}

impl BlockSaved {
    /// Drops n₁ = rms(x)·g₁, n₂ = rms(h)·g₂ and s = silu(a)·b — `runtime.activation_checkpointing =
    /// "selective"`: what stays is x, q, k, v, the attention output o and its log-sum-exp, h, a and b
    /// (every matrix product's and the attention's output), N·(4D + 2K + 2F) values a block instead of
    /// N·(6D + 2K + 3F); the backward recomputes the three from x, h, a and b.
    pub fn drop_elementwise(mut self) -> Self {
        self.n1 = None;
        self.n2 = None;
        self.s = None;
        self
    }
}

/// A kept activation, or `recompute`'s when the forward dropped it.
fn kept_or(
    kept: &Option<Tensor>,
    recompute: impl FnOnce() -> candle_core::Result<Tensor>,
) -> candle_core::Result<Tensor> {
    match kept {
        Some(t) => Ok(t.clone()),
        None => recompute(),
    }
}

/// What a block's backward returns: dL/dx (when asked) and the trainable parameters' gradients, named
/// under the block's prefix.
#[derive(Debug)]
pub struct BlockGrads {
    /// dL/dx, in the compute dtype.
    pub dx: Option<Tensor>,
    /// (checkpoint name, gradient).
    pub params: Vec<(String, Tensor)>,
}

impl TransformerBlock {
    /// The forward of [`TransformerBlock::forward`] with no autograd, keeping the activations for
    /// [`TransformerBlock::backward`]. Dropout masks are drawn in the same order as the plain forward.
    pub fn forward_saved(&self, x: &Tensor, rope: &Rope, ctx: &ForwardCtx) -> Result<BlockSaved> {
        let (bs, t, _) = x.dims3()?;
        let at = &self.attention;
        let ff = &self.feed_forward;
        let (nh, nkv, hd) = at.heads();
        let x = x.detach();
        let n1 = self.attention_norm.forward_nograd(&x)?;
        let (q0, lq) = at.wq.forward_saved(&n1, ctx)?;
        let (k0, lk) = at.wk.forward_saved(&n1, ctx)?;
        let (v, lv) = at.wv.forward_saved(&n1, ctx)?;
        let kn = at.kernels;
        let q = rope.apply(kn, &q0.reshape((bs, t, nh, hd))?)?;
        let k = rope.apply(kn, &k0.reshape((bs, t, nkv, hd))?)?;
        let v = v.reshape((bs, t, nkv, hd))?;
        let (o, lse) = kernels::attention::attention_forward(kn, &q, &k, &v)?;
        let o = o.reshape((bs, t, nh * hd))?;
        let (ao, lo) = at.wo.forward_saved(&o, ctx)?;
        let h = kernels::add(kn, &x, &ao)?;
        let n2 = self.ffn_norm.forward_nograd(&h)?;
        let (a, l1) = ff.w1.forward_saved(&n2, ctx)?;
        let (b, l3) = ff.w3.forward_saved(&n2, ctx)?;
        let s = kernels::swiglu::gate(kn, &a, &b)?;
        let (f, l2) = ff.w2.forward_saved(&s, ctx)?;
        let out = kernels::add(kn, &h, &f)?;
        Ok(BlockSaved {
            x,
            out,
            n1: Some(n1),
            q,
            k,
            v,
            o,
            lse,
            h,
            n2: Some(n2),
            a,
            b,
            s: Some(s),
            lin: [lq, lk, lv, lo, l1, l2, l3],
        })
    }

    /// Backward of the block through `saved` for upstream gradient `dout` [B, T, D]; parameter gradients
    /// are named `prefix` + their checkpoint name (e.g. `layers.3.attention.wq.lora_A.weight`).
    pub fn backward(
        &self,
        saved: &BlockSaved,
        dout: &Tensor,
        rope: &Rope,
        need_dx: bool,
        prefix: &str,
    ) -> Result<BlockGrads> {
        let sv = saved;
        let dt = sv.x.dtype();
        let dout = dout.to_dtype(dt)?;
        let at = &self.attention;
        let ff = &self.feed_forward;
        let (nh, nkv, hd) = at.heads();
        let (bs, t, _) = sv.x.dims3()?;
        let [lq, lk, lv, lo, l1, l2, l3] = &sv.lin;
        let mut g = Vec::new();
        // dL/dx of one linear layer, added to `acc` when given (layers sharing an input)
        let lin = |l: &LoraLinear,
                   name: &str,
                   x: &Tensor,
                   s: &LinearSaved,
                   dy: &Tensor,
                   acc: Option<Tensor>,
                   g: &mut Vec<(String, Tensor)>|
         -> Result<Tensor> {
            let part = if matches!(name, "wq" | "wk" | "wv" | "wo") {
                "attention"
            } else {
                "feed_forward"
            };
            let prefix = format!("{prefix}{part}.{name}.");
            match acc {
                Some(acc) => l.backward_add(x, s, dy, acc, &prefix, g),
                None => {
                    let dx = l.backward(x, s, dy, true, &prefix, g)?;
                    dx.ok_or_else(|| anyhow::anyhow!("{prefix}: no input gradient"))
                }
            }
        };
        // feed-forward (s and n₂ recomputed here when the forward dropped them)
        let s = kept_or(&sv.s, || kernels::swiglu::gate(ff.kernels, &sv.a, &sv.b))?;
        let ds = lin(&ff.w2, "w2", &s, l2, &dout, None, &mut g)?;
        drop(s);
        let (da, db) = kernels::swiglu::swiglu_backward(ff.kernels, &sv.a, &sv.b, &ds)?;
        let n2 = kept_or(&sv.n2, || self.ffn_norm.forward_nograd(&sv.h))?;
        let dn2 = lin(&ff.w1, "w1", &n2, l1, &da, None, &mut g)?;
        let dn2 = lin(&ff.w3, "w3", &n2, l3, &db, Some(dn2), &mut g)?;
        drop(n2);
        // dh = dout + rms′(h, dn2): the residual's gradient added inside the norm's backward
        let (dh, dg2) = self.ffn_norm.backward_add(&sv.h, &dn2, &dout)?;
        if let Some(d) = dg2 {
            g.push((format!("{prefix}ffn_norm.weight"), d));
        }
        // attention
        let d_o = lin(&at.wo, "wo", &sv.o, lo, &dh, None, &mut g)?.reshape((bs, t, nh, hd))?;
        let (dq, dk, dv) = kernels::attention::attention_backward(
            &sv.q,
            &sv.k,
            &sv.v,
            &sv.o.reshape((bs, t, nh, hd))?,
            &d_o,
            sv.lse.as_ref(),
        )?;
        let (cos, sin) = rope.tables();
        let dq = kernels::rope::rope_backward(&dq, cos, sin)?.reshape((bs, t, nh * hd))?;
        let dk = kernels::rope::rope_backward(&dk, cos, sin)?.reshape((bs, t, nkv * hd))?;
        let dv = dv.reshape((bs, t, nkv * hd))?;
        let n1 = kept_or(&sv.n1, || self.attention_norm.forward_nograd(&sv.x))?;
        let dn1 = lin(&at.wq, "wq", &n1, lq, &dq, None, &mut g)?;
        let dn1 = lin(&at.wk, "wk", &n1, lk, &dk, Some(dn1), &mut g)?;
        let dn1 = lin(&at.wv, "wv", &n1, lv, &dv, Some(dn1), &mut g)?;
        let (dx, dg1) = self.attention_norm.backward_add(&sv.x, &dn1, &dh)?;
        if let Some(d) = dg1 {
            g.push((format!("{prefix}attention_norm.weight"), d));
        }
        let dx = need_dx.then_some(dx);
        Ok(BlockGrads { dx, params: g })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{LoraConfig, ModelArgs, ParamGroup, Transformer, VisitParams};
    use candle_core::{DType, Device, Var};

    /// The `tiny` preset from `seed`: every weight trainable (`full`), or LoRA with dropout 0.3 on every
    /// linear layer (adapters seeded by `lora_seed`) with non-zero B so the adapters carry signal.
    fn tiny_model(seed: u64, full: bool, lora_seed: u64) -> Result<Transformer> {
        let args = ModelArgs::preset("tiny").expect("preset");
        let mut m = Transformer::random(args, seed, DType::F32, &Device::Cpu)?;
        if full {
            m.set_trainable_groups(&[ParamGroup::Trunk, ParamGroup::Heads])?;
            return Ok(m);
        }
        let cfg = LoraConfig {
            dropout: 0.3,
            target_modules: vec!["all-linear".into()],
            ..Default::default()
        };
        m.add_lora(&cfg, lora_seed)?;
        m.visit_mut("", &mut |name, p| {
            if name.ends_with("lora_B.weight") {
                let t = Tensor::randn(0f32, 0.1, p.tensor().shape(), &Device::Cpu).unwrap();
                p.set_value(t).unwrap();
            }
        });
        Ok(m)
    }

    /// The hand-written backward equals candle's autograd of the plain forward for one block, with LoRA
    /// dropout on (the same masks are drawn: same seed, same order), for LoRA and for full fine-tuning.
    #[test]
    fn hand_written_block_backward_matches_autograd_with_dropout() -> Result<()> {
        let dev = Device::Cpu;
        for full in [false, true] {
            let m = tiny_model(5, full, 1)?;
            let (b, t) = (2, 9);
            let bi = m.block_inputs(t)?;
            let block = &m.layers[0];
            let x = Tensor::randn(0f32, 1.0, (b, t, m.args.dim), &dev)?;
            let dy = Tensor::randn(0f32, 1.0, (b, t, m.args.dim), &dev)?;
            // autograd
            let xv = Var::from_tensor(&x)?;
            let out = block.forward(xv.as_tensor(), &bi.rope, &bi.mask, &ForwardCtx::train(9))?;
            let store = (out * &dy)?.sum_all()?.backward()?;
            // by hand
            let sv = block.forward_saved(&x, &bi.rope, &ForwardCtx::train(9))?;
            let g = block.backward(&sv, &dy, &bi.rope, true, "layers.0.")?;
            let d = |a: &Tensor, b: &Tensor| -> f32 {
                let s = b
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                let e = (a - b).unwrap().abs().unwrap().max_all().unwrap();
                e.to_scalar::<f32>().unwrap() / s.max(1.0)
            };
            let dx_ref = store.get(xv.as_tensor()).expect("dx");
            let dx = g.dx.as_ref().expect("dx");
            assert!(
                d(dx, dx_ref) < 1e-5,
                "full={full}: dx differs by {}",
                d(dx, dx_ref)
            );
            let mut n = 0;
            block.visit("layers.0.", &mut |name, p| {
                if let Some(want) = p.var().and_then(|v| store.get(v.as_tensor())) {
                    let got = g
                        .params
                        .iter()
                        .find(|(k, _)| k == name)
                        .unwrap_or_else(|| panic!("no gradient for {name}"));
                    assert!(
                        d(&got.1, want) < 1e-5,
                        "full={full}: {name} differs by {}",
                        d(&got.1, want)
                    );
                    n += 1;
                }
            });
            assert_eq!(
                n,
                g.params.len(),
                "full={full}: the same parameters get gradients"
            );
            assert!(n >= if full { 9 } else { 14 });
        }
        Ok(())
    }

    /// With the norm outputs and the SwiGLU product dropped (selective recomputation) the backward
    /// recomputes them and returns exactly the gradients of the full set: for full fine-tuning (where
    /// n₁, n₂ and s feed the weight gradients of wq/wk/wv, w1/w3 and w2) and for LoRA on every linear
    /// layer with dropout (the masks stay kept; the recomputed inputs meet them).
    #[test]
    fn dropping_the_elementwise_activations_changes_no_gradient() -> Result<()> {
        for full in [true, false] {
            dropping_changes_nothing(full)?;
        }
        Ok(())
    }

    fn dropping_changes_nothing(full_ft: bool) -> Result<()> {
        let dev = Device::Cpu;
        let m = tiny_model(11, full_ft, 2)?;
        let (b, t) = (2, 7);
        let bi = m.block_inputs(t)?;
        let block = &m.layers[1];
        let x = Tensor::randn(0f32, 1.0, (b, t, m.args.dim), &dev)?;
        let dy = Tensor::randn(0f32, 1.0, (b, t, m.args.dim), &dev)?;
        let ctx = || ForwardCtx::train(3);
        let full = block.forward_saved(&x, &bi.rope, &ctx())?;
        let slim = block
            .forward_saved(&x, &bi.rope, &ctx())?
            .drop_elementwise();
        assert!(slim.n1.is_none() && slim.n2.is_none() && slim.s.is_none());
        let gf = block.backward(&full, &dy, &bi.rope, true, "layers.1.")?;
        let gs = block.backward(&slim, &dy, &bi.rope, true, "layers.1.")?;
        let eq = |a: &Tensor, b: &Tensor| -> Result<bool> {
            Ok(a.flatten_all()?.to_vec1::<f32>()? == b.flatten_all()?.to_vec1::<f32>()?)
        };
        assert!(eq(
            gf.dx.as_ref().expect("dx"),
            gs.dx.as_ref().expect("dx")
        )?);
        assert_eq!(gf.params.len(), gs.params.len());
        assert!(
            gf.params.len() >= if full_ft { 9 } else { 14 },
            "every weight (or adapter) of the block trains"
        );
        for ((nf, tf), (ns, ts)) in gf.params.iter().zip(&gs.params) {
            assert_eq!(nf, ns);
            assert!(eq(tf, ts)?, "{nf} differs");
        }
        Ok(())
    }
}
