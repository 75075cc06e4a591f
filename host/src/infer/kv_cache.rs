//! Incremental decoding with a key/value cache: each trunk block and head 0 keep the rotated keys and
//! the values of every position seen, so a new token costs one position's work instead of the whole
//! sequence's. [`Decoder::feed`] runs new tokens (the prompt at once — prefill —, then one at a time)
//! and returns head 0's logits at the last position. [`Decoder::new_batch`] decodes several prompts as
//! one batch: prompts are left-padded to the longest, a row's pad keys are masked out (each pad query
//! sees only itself, so nothing is undefined), and as RoPE scores depend only on the distance between
//! positions, a padded row computes what it would alone.

use crate::model::block::TransformerBlock;
use crate::model::rope::Rope;
use crate::model::{ForwardCtx, Transformer};
use anyhow::{bail, Result};
use candle_core::{DType, Tensor, D};

/// Rotated keys and values of one block for the positions seen so far: buffers [B, n_kv, capacity,
/// head_dim] written in place (`slice_set`) and read as their first `len` positions. Growing by whole
/// chunks instead of concatenating at every token keeps the allocations few and of few sizes (a CUDA
/// memory pool that keeps freed blocks would otherwise hold one block per length seen).
#[derive(Debug, Default, Clone)]
pub(crate) struct BlockCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
    len: usize,
}

/// Positions a cache buffer grows by (small in unit tests, so that their sequences cross it).
const CACHE_CHUNK: usize = if cfg!(test) { 16 } else { 256 };

impl BlockCache {
    /// Keeps the first `n` positions (speculative decoding drops the rejected drafts' positions).
    pub(crate) fn truncate(&mut self, n: usize) -> Result<()> {
        self.len = self.len.min(n);
        Ok(())
    }

    /// Keeps the positions `start..start + j0` and moves the entries at `moved` (absolute positions,
    /// [m − j0] u32 on the device) to `start + j0..`: a tree round's accepted path, whose first `j0`
    /// nodes were already in place. The cache then holds `start + m` positions.
    pub(crate) fn keep_path(&mut self, start: usize, j0: usize, moved: &Tensor) -> Result<()> {
        let n = moved.dim(0)?;
        if n > 0 {
            for buf in [&self.k, &self.v].into_iter().flatten() {
                let rows = buf.index_select(moved, 2)?;
                buf.slice_set(&rows, 2, start + j0)?;
            }
        }
        self.len = start + j0 + n;
        Ok(())
    }

    /// Appends new keys and values [B, n_kv, Tn, head_dim]; returns all of them, [B, n_kv, len, head_dim].
    fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, nkv, tn, hd) = k.dims4()?;
        let need = self.len + tn;
        let cap = self.k.as_ref().map_or(Ok(0), |t| t.dim(2))?;
        if need > cap {
            let new_cap = need.div_ceil(CACHE_CHUNK) * CACHE_CHUNK;
            let grow = |old: &Option<Tensor>| -> Result<Tensor> {
                let buf = Tensor::zeros((b, nkv, new_cap, hd), k.dtype(), k.device())?;
                if let Some(old) = old {
                    if self.len > 0 {
                        buf.slice_set(&old.narrow(2, 0, self.len)?.contiguous()?, 2, 0)?;
                    }
                }
                Ok(buf)
            };
            self.k = Some(grow(&self.k)?);
            self.v = Some(grow(&self.v)?);
        }
        let (kb, vb) = match (&self.k, &self.v) {
            (Some(kb), Some(vb)) => (kb, vb),
            _ => bail!("cache buffers missing"),
        };
        kb.slice_set(k, 2, self.len)?;
        vb.slice_set(v, 2, self.len)?;
        self.len = need;
        Ok((kb.narrow(2, 0, need)?, vb.narrow(2, 0, need)?))
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

/// Additive mask [B, Tn, start + Tn] of left-padded rows (row b's first `pads[b]` positions are
/// padding): [`offset_causal_mask`], and no query sees a pad key but a pad query its own.
fn padded_causal_mask(
    pads: &[usize],
    start: usize,
    tn: usize,
    dev: &candle_core::Device,
) -> Result<Tensor> {
    let all = start + tn;
    let mut m = Vec::with_capacity(pads.len() * tn * all);
    for &pad in pads {
        for i in 0..tn {
            let q = start + i;
            m.extend((0..all).map(|k| {
                if k > q || (k < pad && k != q) {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            }));
        }
    }
    Ok(Tensor::from_vec(m, (pads.len(), tn, all), dev)?)
}

/// One block on new positions x [B, Tn, D] at `start`.., reading and extending `cache`; `mask` is
/// [Tn, all] (every row alike) or [B, Tn, all].
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
    let (k, v) = cache.append(&k, &v)?;
    let all = k.dim(2)?;
    // query heads of one kv head stacked along time, as in the uncached attention
    let rep = nh / nkv;
    let qg = q
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b, nkv, rep * tn, hd))?;
    let scores = (qg.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?.to_dtype(DType::F32)?;
    let mask_rows = if mask.rank() == 3 { mask.dim(0)? } else { 1 };
    let scores = scores
        .reshape((b, nkv, rep, tn, all))?
        .broadcast_add(&mask.reshape((mask_rows, 1, 1, tn, all))?)?;
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
    let h = (x + a.wo.forward(&out, ctx)?)?;
    Ok((&h
        + block
            .feed_forward
            .forward(&block.ffn_norm.forward(&h)?, ctx)?)?)
}

/// A decoding session with head 0 and a cache per block: one sequence ([`Decoder::new`]), or a batch of
/// left-padded rows ([`Decoder::new_batch`]).
pub struct Decoder<'a> {
    model: &'a Transformer,
    caches: Vec<BlockCache>,
    pos: usize,
    ctx: ForwardCtx,
    /// Pad positions at the start of each row (one row of 0 for a single sequence).
    pads: Vec<usize>,
}

impl<'a> Decoder<'a> {
    /// An empty session of one sequence.
    pub fn new(model: &'a Transformer) -> Self {
        Decoder {
            model,
            caches: vec![BlockCache::default(); model.layers.len()],
            pos: 0,
            ctx: ForwardCtx::eval(),
            pads: vec![0],
        }
    }

    /// A session of `prompts` as one batch (each left-padded to the longest), prefilled: returns it and
    /// head 0's logits [B, V] (f32) at each prompt's last position.
    pub fn new_batch(model: &'a Transformer, prompts: &[Vec<u32>]) -> Result<(Self, Tensor)> {
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        if prompts.iter().any(Vec::is_empty) {
            bail!("a prompt is empty");
        }
        let pads: Vec<usize> = prompts.iter().map(|p| longest - p.len()).collect();
        let mut ids = Vec::with_capacity(prompts.len() * longest);
        for (p, &pad) in prompts.iter().zip(&pads) {
            // the pad id is never seen by a real position: the prompt's first token serves
            ids.extend(std::iter::repeat_n(p[0], pad).chain(p.iter().copied()));
        }
        let mut dec = Decoder {
            pads,
            ..Decoder::new(model)
        };
        let input = Tensor::from_vec(ids, (prompts.len(), longest), model.device())?;
        let (_, z) = dec.feed_input(&input)?;
        let logits = dec.last_logits(&z)?;
        Ok((dec, logits))
    }

    /// Feeds one next token per row of a batch session; head 0's logits [B, V] (f32) for each row.
    pub fn feed_rows(&mut self, next: &[u32]) -> Result<Tensor> {
        if next.len() != self.pads.len() {
            bail!("{} tokens for {} rows", next.len(), self.pads.len());
        }
        let input = Tensor::from_vec(next.to_vec(), (next.len(), 1), self.model.device())?;
        let (_, z) = self.feed_input(&input)?;
        self.last_logits(&z)
    }

    /// Head 0's logits [B, V] (f32) at the last of z's positions.
    fn last_logits(&self, z: &Tensor) -> Result<Tensor> {
        let (b, tn, _) = z.dims3()?;
        let last = z.narrow(1, tn - 1, 1)?.contiguous()?;
        Ok(self
            .model
            .logits(&last, &self.ctx)?
            .reshape((b, ()))?
            .to_dtype(DType::F32)?)
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
        Ok(self.last_logits(&z)?.flatten_all()?)
    }

    /// Runs `tokens` (the next positions) through the trunk and head 0, extending the caches; returns
    /// the trunk's output and head 0's, each [1, Tn, D].
    pub(crate) fn feed_blocks(&mut self, tokens: &[u32]) -> Result<(Tensor, Tensor)> {
        if tokens.is_empty() {
            bail!("nothing to feed");
        }
        if self.pads.len() != 1 {
            bail!("feed runs one sequence; a batch session takes feed_rows");
        }
        let input = Tensor::new(tokens, self.model.device())?.unsqueeze(0)?;
        self.feed_input(&input)
    }

    /// [`Decoder::feed_blocks`] of token ids already on the model's device ([1, Tn] u32): speculative
    /// decoding feeds its drafts without bringing them to the host first.
    pub(crate) fn feed_ids(&mut self, ids: &Tensor) -> Result<(Tensor, Tensor)> {
        if self.pads.len() != 1 || ids.dim(0)? != 1 {
            bail!("feed_ids runs one sequence");
        }
        if ids.dim(1)? == 0 {
            bail!("nothing to feed");
        }
        self.feed_input(ids)
    }

    /// Runs token ids [B, Tn] (the next positions of every row) through the trunk and head 0, extending
    /// the caches; returns the trunk's output and head 0's, each [B, Tn, D].
    fn feed_input(&mut self, input: &Tensor) -> Result<(Tensor, Tensor)> {
        let m = self.model;
        let (start, tn) = (self.pos, input.dim(1)?);
        self.check_room(tn)?;
        let (rope, mut mask) = positions(m, start, tn)?;
        if self.pads.iter().any(|&p| p > 0) {
            mask = padded_causal_mask(&self.pads, start, tn, m.device())?;
        }
        self.feed_positions(input, &rope, &mask)
    }

    /// Runs token ids [1, Tn] on the device through the trunk and head 0 at the positions of `rope`
    /// under the additive `mask` [Tn, len + Tn] (a draft tree's: [`super::draft_tree`]), appending
    /// them to the caches at len..len + Tn; returns the trunk's output and head 0's, each [1, Tn, D].
    pub(crate) fn feed_tree(
        &mut self,
        ids: &Tensor,
        rope: &Rope,
        mask: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let tn = ids.dim(1)?;
        if self.pads.len() != 1 || ids.dim(0)? != 1 || tn == 0 {
            bail!("feed_tree runs one sequence of at least one token");
        }
        self.check_room(tn)?;
        self.feed_positions(ids, rope, mask)
    }

    /// Refuses `tn` new positions past the model's max_seq_len.
    fn check_room(&self, tn: usize) -> Result<()> {
        let max = self.model.args.max_seq_len;
        if self.pos + tn > max {
            bail!(
                "{} positions exceed the model's max_seq_len {max}",
                self.pos + tn
            );
        }
        Ok(())
    }

    /// The trunk and head 0 over `input` [B, Tn] with the given tables and mask (see `feed_input`).
    fn feed_positions(
        &mut self,
        input: &Tensor,
        rope: &Rope,
        mask: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let m = self.model;
        let tn = input.dim(1)?;
        let mut x = m.embed(input)?;
        // the trunk blocks, then head 0 (the last block of `layers`)
        let n_trunk = m.layers.len() - 1;
        let (trunk, head0) = self.caches.split_at_mut(n_trunk);
        for (block, cache) in m.layers.iter().zip(trunk.iter_mut()) {
            x = block_cached(block, &x, rope, mask, cache, &self.ctx)?;
        }
        let z = block_cached(&m.layers[n_trunk], &x, rope, mask, &mut head0[0], &self.ctx)?;
        self.pos += tn;
        Ok((x, z))
    }

    /// After a tree round at `start`: keeps the accepted nodes, the first `j0` of which are in place
    /// and the rest at the absolute positions `moved` ([`BlockCache::keep_path`]), in every cache.
    pub(crate) fn keep_path(&mut self, start: usize, j0: usize, moved: &Tensor) -> Result<()> {
        for c in &mut self.caches {
            c.keep_path(start, j0, moved)?;
        }
        self.pos = start + j0 + moved.dim(0)?;
        Ok(())
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

    #[test]
    fn a_padded_row_hides_its_pad_keys_but_from_the_pad_itself() -> Result<()> {
        let m: Vec<Vec<Vec<f32>>> = padded_causal_mask(&[0, 2], 0, 3, &Device::Cpu)?.to_vec3()?;
        let inf = f32::NEG_INFINITY;
        assert_eq!(
            m[0],
            offset_causal_mask(0, 3, &Device::Cpu)?.to_vec2::<f32>()?
        );
        assert_eq!(
            m[1],
            vec![
                vec![0.0, inf, inf],
                vec![inf, 0.0, inf],
                vec![inf, inf, 0.0]
            ]
        );
        Ok(())
    }
}
