//! The block-wise engine (docs/design.md, "The block-wise engine"): forward unit by unit keeping only each unit's input,
//! per-token CE of every head computed in chunks over the valid rows (never [B,T,H,V] logits), values,
//! reference CE; then, given the plugin's coefficients, backward unit by unit through the surrogate
//! S = Σ c_ce·CE + Σ c_v·V with recomputation. With one rank this is a single-device trainer with
//! activation checkpointing; the same unit structure is what FSDP shards.

use super::grads::Grads;
use crate::data::MicroBatch;
use crate::model::transformer::BlockInputs;
use crate::model::{ForwardCtx, Param, Transformer, ValueHead, VisitParams};
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor, Var, D};

/// What the forward pass keeps: unit inputs and the per-token scalars.
#[derive(Debug)]
pub struct ForwardState {
    /// Input of trunk block i at index i; the last entry is h_trunk.
    pub unit_inputs: Vec<Tensor>,
    /// CE[b,t,k] flat [B·T·H] (0 where invalid).
    pub ce: Vec<f32>,
    /// M[b,t,k] flat [B·T·H].
    pub ce_mask: Vec<u8>,
    /// V[b,t] flat [B·T], when a value head is present.
    pub values: Option<Vec<f32>>,
    /// (B, T, H).
    pub shape: (usize, usize, usize),
    tokens: Vec<u32>,
}

/// Runs the model unit by unit.
pub struct Engine<'a> {
    /// The policy model.
    pub model: &'a Transformer,
    /// The value head, when the pipeline uses values.
    pub value_head: Option<&'a ValueHead>,
    /// Rows per vocabulary-projection chunk.
    pub chunk_rows: usize,
    /// Dropout seed of this micro-batch (forward and recomputation draw the same masks).
    pub seed: u64,
    /// Training mode (dropout on).
    pub train: bool,
}

use wmtp_plugin_host::ce_mask;

/// CE of rows `rows` of z [N, D] against `targets`: logsumexp(logits) − logits[target], f32.
fn rows_ce(
    model: &Transformer,
    z_rows: &Tensor,
    targets: &Tensor,
    ctx: &ForwardCtx,
) -> Result<Tensor> {
    let logits = model.logits(z_rows, ctx)?.to_dtype(DType::F32)?;
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let lse = (logits
        .broadcast_sub(&max)?
        .exp()?
        .sum_keepdim(D::Minus1)?
        .log()?
        + &max)?;
    let picked = logits.gather(&targets.unsqueeze(1)?, 1)?;
    Ok((lse - picked)?.squeeze(1)?)
}

/// Valid rows (b·T + t) of head k and their target ids.
fn head_rows(tokens: &[u32], mask: &[u8], h: usize, k: usize) -> (Vec<u32>, Vec<u32>) {
    let (mut rows, mut tg) = (Vec::new(), Vec::new());
    for row in 0..tokens.len() {
        if mask[row * h + k] != 0 {
            rows.push(row as u32);
            tg.push(tokens[row + k + 1]);
        }
    }
    (rows, tg)
}

impl<'a> Engine<'a> {
    fn ctx(&self, unit: u64) -> ForwardCtx {
        if self.train {
            ForwardCtx::train(self.seed ^ unit.wrapping_mul(0xA24B_AED4_963E_E407))
        } else {
            ForwardCtx::eval()
        }
    }

    fn dev(&self) -> &Device {
        self.model.device()
    }

    /// Forward: unit inputs, CE of every head on its valid rows, and values.
    pub fn forward(&self, mb: &MicroBatch) -> Result<ForwardState> {
        let m = self.model;
        let (b, t) = mb.tokens.dims2()?;
        let h = m.args.n_future_tokens;
        if mb.target_mask.len() != b * t {
            bail!(
                "target mask has {} entries for a [{b}, {t}] batch",
                mb.target_mask.len()
            );
        }
        let bi = m.block_inputs(t)?;
        let tokens: Vec<u32> = mb.tokens.flatten_all()?.to_vec1()?;
        let mut inputs = Vec::with_capacity(m.layers.len());
        let mut x = m.embed(&mb.tokens)?.detach();
        for (i, block) in m.layers[..m.layers.len() - 1].iter().enumerate() {
            inputs.push(x.clone());
            x = block
                .forward(&x, &bi.rope, &bi.mask, &self.ctx(1 + i as u64))?
                .detach();
        }
        inputs.push(x.clone());
        let mask = ce_mask(&mb.target_mask, b, t, h);
        let mut ce = vec![0f32; b * t * h];
        for k in 0..h {
            let z = m
                .head(k)
                .forward(&x, &bi.rope, &bi.mask, &self.ctx(1000 + k as u64))?
                .detach();
            let zf = z.reshape((b * t, m.args.dim))?;
            let (rows, tg) = head_rows(&tokens, &mask, h, k);
            for (rc, tc) in rows
                .chunks(self.chunk_rows.max(1))
                .zip(tg.chunks(self.chunk_rows.max(1)))
            {
                let idx = Tensor::new(rc, self.dev())?;
                let zc = zf.index_select(&idx, 0)?;
                let vals: Vec<f32> = rows_ce(
                    m,
                    &zc,
                    &Tensor::new(tc, self.dev())?,
                    &self.ctx(2000 + k as u64),
                )?
                .to_vec1()?;
                for (&r, v) in rc.iter().zip(vals) {
                    ce[r as usize * h + k] = v;
                }
            }
        }
        let values = match self.value_head {
            Some(vh) => {
                let v = vh.forward(&m.norm.forward(&x)?, &self.ctx(3000))?;
                Some(v.flatten_all()?.to_vec1::<f32>()?)
            }
            None => None,
        };
        Ok(ForwardState {
            unit_inputs: inputs,
            ce,
            ce_mask: mask,
            values,
            shape: (b, t, h),
            tokens,
        })
    }

    /// Backward of S = Σ c_ce·CE + Σ c_v·V unit by unit (recomputing each unit from its input), adding
    /// the trainable parameters' gradients to `grads`. `c_ce` may be empty (all zero).
    pub fn backward(
        &self,
        st: &ForwardState,
        c_ce: &[f32],
        c_v: Option<&[f32]>,
        grads: &mut Grads,
    ) -> Result<()> {
        let m = self.model;
        let (b, t, h) = st.shape;
        let d = m.args.dim;
        let bi: BlockInputs = m.block_inputs(t)?;
        let n_trunk = m.layers.len() - 1;
        let trunk_trainable = any_trainable(&m.tok_embeddings)
            || m.layers[..n_trunk].iter().any(|b| has_trainable(b));
        let h_trunk = &st.unit_inputs[n_trunk];
        let mut dh = Tensor::zeros((b, t, d), DType::F32, self.dev())?;
        let shared_trainable = has_trainable(&m.norm) || has_trainable(&m.output);
        for k in 0..h {
            let coef_k: Vec<f32> = if c_ce.is_empty() {
                Vec::new()
            } else {
                (0..b * t).map(|r| c_ce[r * h + k]).collect()
            };
            if coef_k.iter().all(|&c| c == 0.0) {
                continue;
            }
            let head = m.head(k);
            if !(trunk_trainable || shared_trainable || has_trainable(head)) {
                continue;
            }
            let head_prefix = if k == 0 {
                format!("layers.{n_trunk}.")
            } else {
                format!("extra_heads.{}.", k - 1)
            };
            // 1. vocabulary projection + CE, chunked, from the detached head output
            let hvar = Var::from_tensor(h_trunk)?;
            let z = head.forward(
                hvar.as_tensor(),
                &bi.rope,
                &bi.mask,
                &self.ctx(1000 + k as u64),
            )?;
            let zf_const = z.detach().reshape((b * t, d))?;
            let (rows, tg) = head_rows(&st.tokens, &st.ce_mask, h, k);
            let mut dz = Tensor::zeros((b * t, d), DType::F32, self.dev())?;
            for (rc, tc) in rows
                .chunks(self.chunk_rows.max(1))
                .zip(tg.chunks(self.chunk_rows.max(1)))
            {
                let idx = Tensor::new(rc, self.dev())?;
                let zc = Var::from_tensor(&zf_const.index_select(&idx, 0)?)?;
                let ce = rows_ce(
                    m,
                    zc.as_tensor(),
                    &Tensor::new(tc, self.dev())?,
                    &self.ctx(2000 + k as u64),
                )?;
                let coef: Vec<f32> = rc.iter().map(|&r| coef_k[r as usize]).collect();
                let s = (ce * Tensor::new(coef, self.dev())?)?.sum_all()?;
                let store = s.backward()?;
                grads.absorb(&m.norm, "norm.", &store)?;
                grads.absorb(&m.output, "output.", &store)?;
                if let Some(g) = store.get(zc.as_tensor()) {
                    dz = dz.index_add(&idx, &g.to_dtype(DType::F32)?, 0)?;
                }
            }
            // 2. the head block, recomputed with its graph
            let s = (z.to_dtype(DType::F32)? * dz.reshape((b, t, d))?)?.sum_all()?;
            let store = s.backward()?;
            grads.absorb(head, &head_prefix, &store)?;
            if let Some(g) = store.get(hvar.as_tensor()) {
                dh = (dh + g.to_dtype(DType::F32)?)?;
            }
        }
        if let (Some(vh), Some(cv)) = (self.value_head, c_v) {
            if cv.iter().any(|&c| c != 0.0) {
                let hvar = Var::from_tensor(h_trunk)?;
                let v = vh.forward(&m.norm.forward(hvar.as_tensor())?, &self.ctx(3000))?;
                let s = (v * Tensor::from_slice(cv, (b, t), self.dev())?)?.sum_all()?;
                let store = s.backward()?;
                grads.absorb(vh, "value_head.", &store)?;
                grads.absorb(&m.norm, "norm.", &store)?;
                if let Some(g) = store.get(hvar.as_tensor()) {
                    dh = (dh + g.to_dtype(DType::F32)?)?;
                }
            }
        }
        if !trunk_trainable {
            return Ok(());
        }
        for i in (0..n_trunk).rev() {
            let block = &m.layers[i];
            let xvar = Var::from_tensor(&st.unit_inputs[i])?;
            let out = block.forward(
                xvar.as_tensor(),
                &bi.rope,
                &bi.mask,
                &self.ctx(1 + i as u64),
            )?;
            let s = (out.to_dtype(DType::F32)? * &dh)?.sum_all()?;
            let store = s.backward()?;
            grads.absorb(block, &format!("layers.{i}."), &store)?;
            dh = match store.get(xvar.as_tensor()) {
                Some(g) => g.to_dtype(DType::F32)?,
                None => return Ok(()), // nothing below depends on this block's input
            };
        }
        if any_trainable(&m.tok_embeddings) {
            let tokens = Tensor::from_slice(&st.tokens, (b, t), self.dev())?;
            let s = (m.embed(&tokens)?.to_dtype(DType::F32)? * &dh)?.sum_all()?;
            let store = s.backward()?;
            if let Some(g) = store.get(m.tok_embeddings.tensor()) {
                grads.add("tok_embeddings.weight", g)?;
            }
        }
        Ok(())
    }
}

/// Values V[b,t] (flat [B·T]) of a frozen critic: its trunk, the shared norm, its value head.
pub fn critic_values(model: &Transformer, vh: &ValueHead, mb: &MicroBatch) -> Result<Vec<f32>> {
    let (_, t) = mb.tokens.dims2()?;
    let bi = model.block_inputs(t)?;
    let ctx = ForwardCtx::eval();
    let h = model.trunk(&mb.tokens, &bi, &ctx)?;
    Ok(vh
        .forward(&model.norm.forward(&h)?, &ctx)?
        .flatten_all()?
        .to_vec1()?)
}

fn any_trainable(p: &Param) -> bool {
    p.is_trainable()
}

/// Whether a module has any trainable parameter.
pub fn has_trainable(m: &dyn VisitParams) -> bool {
    let mut any = false;
    m.visit("", &mut |_, p| any |= p.is_trainable());
    any
}
