//! Incremental decoding with a key/value cache: each trunk block and head 0 keep the rotated keys and
//! the values of every position seen, so a new token costs one position's work instead of the whole
//! sequence's. [`Decoder::feed`] runs new tokens (the prompt at once — prefill —, then one at a time)
//! and returns head 0's logits at the last position.

use super::block::TransformerBlock;
use super::rope::Rope;
use super::{ForwardCtx, Transformer};
use anyhow::{bail, Result};
use candle_core::{DType, Tensor, D};

/// Rotated keys and values of one block for the positions seen so far: [B, n_kv, T, head_dim].
#[derive(Debug, Default, Clone)]
pub(crate) struct BlockCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
}

impl BlockCache {
    /// Keeps the first `n` positions (speculative decoding drops the rejected drafts' positions).
    pub(crate) fn truncate(&mut self, n: usize) -> Result<()> {
        for t in [&mut self.k, &mut self.v] {
            if let Some(x) = t.take() {
                *t = Some(x.narrow(2, 0, n.min(x.dim(2)?))?);
            }
        }
        Ok(())
    }
}

/// Additive mask [Tn, start + Tn] for new positions start..start+Tn over all positions: 0 where the
/// key's position ≤ the query's, −∞ after.
fn offset_causal_mask(start: usize, tn: usize, dev: &candle_core::Device) -> Result<Tensor> {
    let all = start + tn;
    let m: Vec<f32> = (0..tn * all)
        .map(|i| {
            let (q, k) = (start + i / all, i % all);
            if k > q {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    Ok(Tensor::from_vec(m, (tn, all), dev)?)
}

/// One block on new positions x [B, Tn, D] at `start`.., reading and extending `cache`.
pub(crate) fn block_cached(
    block: &TransformerBlock,
    x: &Tensor,
    rope: &Rope,
    mask: &Tensor,
    cache: &mut BlockCache,
    ctx: &ForwardCtx,
) -> Result<Tensor> {
    let a = &block.attention;
    let (b, tn, _) = x.dims3()?;
    let (nh, nkv, hd) = a.heads();
    let n = block.attention_norm.forward(x)?;
    let q = rope.apply_plain(&a.wq.forward(&n, ctx)?.reshape((b, tn, nh, hd))?)?;
    let k = rope.apply_plain(&a.wk.forward(&n, ctx)?.reshape((b, tn, nkv, hd))?)?;
    let v = a.wv.forward(&n, ctx)?.reshape((b, tn, nkv, hd))?;
    let k = k.transpose(1, 2)?.contiguous()?;
    let v = v.transpose(1, 2)?.contiguous()?;
    let k = match cache.k.take() {
        Some(old) => Tensor::cat(&[&old, &k], 2)?,
        None => k,
    };
    let v = match cache.v.take() {
        Some(old) => Tensor::cat(&[&old, &v], 2)?,
        None => v,
    };
    let all = k.dim(2)?;
    // query heads of one kv head stacked along time, as in the uncached attention
    let rep = nh / nkv;
    let qg = q
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b, nkv, rep * tn, hd))?;
    let scores = (qg.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?.to_dtype(DType::F32)?;
    let scores = scores
        .reshape((b, nkv, rep, tn, all))?
        .broadcast_add(&mask.reshape((1, 1, 1, tn, all))?)?;
    let max = scores.max_keepdim(D::Minus1)?;
    let e = scores.broadcast_sub(&max)?.exp()?;
    let p = e
        .broadcast_div(&e.sum_keepdim(D::Minus1)?)?
        .to_dtype(x.dtype())?;
    let out = p.reshape((b, nkv, rep * tn, all))?.matmul(&v)?;
    let out = out
        .reshape((b, nh, tn, hd))?
        .transpose(1, 2)?
        .reshape((b, tn, nh * hd))?;
    cache.k = Some(k);
    cache.v = Some(v);
    let h = (x + a.wo.forward(&out, ctx)?)?;
    Ok((&h
        + block
            .feed_forward
            .forward(&block.ffn_norm.forward(&h)?, ctx)?)?)
}

/// A decoding session of one sequence (batch 1) with head 0 and a cache per block.
pub struct Decoder<'a> {
    model: &'a Transformer,
    caches: Vec<BlockCache>,
    pos: usize,
    ctx: ForwardCtx,
}

impl<'a> Decoder<'a> {
    /// An empty session.
    pub fn new(model: &'a Transformer) -> Self {
        Decoder {
            model,
            caches: vec![BlockCache::default(); model.layers.len()],
            pos: 0,
            ctx: ForwardCtx::eval(),
        }
    }

    /// The model it decodes with.
    pub(crate) fn model(&self) -> &'a Transformer {
        self.model
    }

    /// Positions seen so far.
    pub fn len(&self) -> usize {
        self.pos
    }

    /// Whether nothing was fed yet.
    pub fn is_empty(&self) -> bool {
        self.pos == 0
    }

    /// Runs `tokens` (the next positions) through the trunk and head 0, extending the caches;
    /// returns head 0's logits [V] (f32) at the last of them.
    pub fn feed(&mut self, tokens: &[u32]) -> Result<Tensor> {
        let (_, z) = self.feed_blocks(tokens)?;
        let last = z.narrow(1, tokens.len() - 1, 1)?.contiguous()?;
        Ok(self
            .model
            .logits(&last, &self.ctx)?
            .flatten_all()?
            .to_dtype(DType::F32)?)
    }

    /// Runs `tokens` (the next positions) through the trunk and head 0, extending the caches; returns
    /// the trunk's output and head 0's, each [1, Tn, D].
    pub(crate) fn feed_blocks(&mut self, tokens: &[u32]) -> Result<(Tensor, Tensor)> {
        let m = self.model;
        if tokens.is_empty() {
            bail!("nothing to feed");
        }
        let (start, tn) = (self.pos, tokens.len());
        if start + tn > m.args.max_seq_len {
            bail!(
                "{} positions exceed the model's max_seq_len {}",
                start + tn,
                m.args.max_seq_len
            );
        }
        let dev = m.device();
        let (rope, mask) = positions(m, start, tn)?;
        let mut x = m.embed(&Tensor::new(tokens, dev)?.unsqueeze(0)?)?;
        // the trunk blocks, then head 0 (the last block of `layers`)
        let n_trunk = m.layers.len() - 1;
        let (trunk, head0) = self.caches.split_at_mut(n_trunk);
        for (block, cache) in m.layers.iter().zip(trunk.iter_mut()) {
            x = block_cached(block, &x, &rope, &mask, cache, &self.ctx)?;
        }
        let z = block_cached(
            &m.layers[n_trunk],
            &x,
            &rope,
            &mask,
            &mut head0[0],
            &self.ctx,
        )?;
        self.pos += tn;
        Ok((x, z))
    }

    /// Keeps the first `n` positions of every cache (speculative decoding drops rejected drafts).
    pub(crate) fn truncate(&mut self, n: usize) -> Result<()> {
        for c in &mut self.caches {
            c.truncate(n)?;
        }
        self.pos = n.min(self.pos);
        Ok(())
    }
}

/// RoPE tables and the offset causal mask ([`offset_causal_mask`]) for new positions start..start+tn.
pub(crate) fn positions(m: &Transformer, start: usize, tn: usize) -> Result<(Rope, Tensor)> {
    let dev = m.device();
    Ok((
        Rope::new(m.args.head_dim(), m.args.rope_theta, start, tn, dev)?,
        offset_causal_mask(start, tn, dev)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn the_offset_mask_lets_each_new_position_see_itself_and_the_past() -> Result<()> {
        let m: Vec<Vec<f32>> = offset_causal_mask(2, 2, &Device::Cpu)?.to_vec2()?;
        let inf = f32::NEG_INFINITY;
        assert_eq!(m, vec![vec![0.0, 0.0, 0.0, inf], vec![0.0, 0.0, 0.0, 0.0]]);
        Ok(())
    }
}
