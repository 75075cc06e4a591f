//! The block-wise engine (docs/design.md, "The block-wise engine"): forward unit by unit keeping only each unit's input,
//! per-token CE of every head computed in chunks over the valid rows (never [B,T,H,V] logits), values,
//! reference CE; then, given the plugin's coefficients, backward unit by unit through the surrogate
//! S = Σ c_ce·CE + Σ c_v·V — recomputing each unit from its input with `activation_checkpointing =
//! "blocks"`, reusing the kept activations with "none", and with "selective" reusing every block's
//! matrix-product and attention outputs while recomputing its norms and SwiGLU product (and the heads'
//! vocabulary chunks). With one rank this is a single-device trainer; the same unit structure is what
//! FSDP shards.

use super::config::ActivationCheckpointing;
use super::schedule::Schedule;
use crate::data::MicroBatch;
use crate::kernels;
use crate::model::block_grad::BlockSaved;
use crate::model::grads::Grads;
use crate::model::lora::LinearSaved;
use crate::model::Unit;
use crate::model::{ForwardCtx, Param, Transformer, ValueHead, VisitParams};
use crate::parallel::strategy::Strategy;
use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use std::borrow::Cow;

/// What the forward pass keeps: unit inputs, the per-token scalars and, unless every block is recomputed,
/// every block's activations (all of them, or the selective set).
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
    heads: Vec<HeadRows>,
    /// Trunk blocks' activations where kept ("none", "selective"), else None.
    saved_trunk: Vec<Option<BlockSaved>>,
    /// Head blocks' activations ("none" or "selective"), else None.
    saved_heads: Vec<Option<BlockSaved>>,
    /// Log-sum-exp of each head's logits on its valid rows (None for a head without any).
    head_lse: Vec<Option<Tensor>>,
    /// Each head's vocabulary chunks as the forward computed them ("none"), else empty: the backward
    /// then recomputes them.
    saved_chunks: Vec<Vec<ChunkSaved>>,
}

impl ForwardState {
    /// The micro-batch's token ids x[b,t], flat [B·T], as the forward read them to the host.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }
}

/// One chunk of a head's valid rows through the shared norm and output projection: its rows z, the
/// normed rows, the logits, and what the output layer's backward needs.
#[derive(Debug)]
struct ChunkSaved {
    z: Tensor,
    normed: Tensor,
    logits: Tensor,
    out: LinearSaved,
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
    /// What the forward keeps for the backward (`runtime.activation_checkpointing`): each block's input
    /// only, recomputing the block in the backward ("blocks"); every activation ("none"); or every
    /// matrix-product and attention output, recomputing the norms and SwiGLU ("selective").
    pub checkpointing: ActivationCheckpointing,
    /// With "selective": how many blocks keep the selective set, trunk blocks from the bottom first and
    /// then the heads' (block index `i` for trunk block i, n_trunk + k for head k); the others keep
    /// nothing and are recomputed as with "blocks". None: all (`runtime.selective_blocks`).
    pub selective_blocks: Option<usize>,
    /// How the step spreads over ranks ([`crate::parallel::strategy`]): every unit is asked of it before it
    /// runs (FSDP gathers it; [`crate::parallel::strategy::NoSharding`] lends the model itself) and handed
    /// to it once its backward is done (FSDP reduce-scatters its gradients).
    pub strategy: &'a dyn Strategy,
    /// `training.detach_extra_heads`: the losses of heads 1..H−1 train only those heads' own blocks
    /// (their input h_trunk is a constant for them, and no gradient reaches the shared norm or output).
    pub detach_extra_heads: bool,
}

use wmtp_plugin_host::ce_mask;

mod backward;

impl ChunkSaved {
    /// Rows `idx` of z [B·T, D] through the shared final norm and the output projection.
    fn compute(model: &Transformer, z: &Tensor, idx: &Tensor) -> Result<Self> {
        let z = z.index_select(idx, 0)?;
        let normed = model.norm.forward_nograd(&z)?;
        let (logits, out) = model.output.forward_saved(&normed, &ForwardCtx::eval())?;
        Ok(ChunkSaved {
            z,
            normed,
            logits,
            out,
        })
    }
}

/// The valid rows of one head, on the host and on the device, computed once per micro-batch.
#[derive(Debug)]
struct HeadRows {
    /// Valid rows (b·T + t) of head k.
    rows: Vec<u32>,
    /// `rows` on the device.
    idx: Tensor,
    /// Target ids of `rows` on the device.
    targets: Tensor,
}

impl HeadRows {
    /// Valid rows (b·T + t) of head k and their target ids.
    fn new(tokens: &[u32], mask: &[u8], h: usize, k: usize, dev: &Device) -> Result<Self> {
        let (mut rows, mut tg) = (Vec::new(), Vec::new());
        for row in 0..tokens.len() {
            if mask[row * h + k] != 0 {
                rows.push(row as u32);
                tg.push(tokens[row + k + 1]);
            }
        }
        Ok(HeadRows {
            idx: Tensor::new(rows.as_slice(), dev)?,
            targets: Tensor::new(tg.as_slice(), dev)?,
            rows,
        })
    }

    /// (start, len) of each chunk of at most `chunk` rows.
    fn chunks(&self, chunk: usize) -> impl Iterator<Item = (usize, usize)> {
        let (n, c) = (self.rows.len(), chunk.max(1));
        (0..n).step_by(c).map(move |s| (s, c.min(n - s)))
    }
}

impl<'a> Engine<'a> {
    /// Block `index`'s activations (numbered as [`Engine::selective_blocks`] counts) as this engine
    /// keeps them from its forward: None with "blocks" (the backward recomputes the block), all of them
    /// with "none", the selective set with "selective" (None past `selective_blocks`).
    fn keep(&self, index: usize, sv: BlockSaved) -> Option<BlockSaved> {
        match self.checkpointing {
            // a session resolves "auto" before any step; unresolved it means its fallback, "blocks"
            ActivationCheckpointing::Blocks | ActivationCheckpointing::Auto => None,
            ActivationCheckpointing::None => Some(sv),
            ActivationCheckpointing::Selective => match self.selective_blocks {
                Some(s) if index >= s => None,
                _ => Some(sv.drop_elementwise()),
            },
        }
    }

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

    /// Hands `unit`'s finished gradients to the strategy (FSDP reduce-scatters them out of `grads` into
    /// the shard sums: a collective, called at the same points on every rank).
    fn flush(&self, unit: Unit, grads: &mut Grads) -> Result<()> {
        self.strategy.unit_backward_done(unit, grads)
    }

    /// The model with `unit` holding its weights ([`Strategy::with_units`]): the model itself, or under
    /// FSDP a copy with the unit gathered (dropped by the caller after use), the schedule's next unit
    /// named for prefetch. `unit` must be the schedule's next ([`Schedule::advance`]). Under FSDP this is
    /// a collective: the schedule depends only on the model, so every rank makes the same calls.
    fn lend(&self, schedule: &Schedule, unit: Unit) -> Result<Cow<'a, Transformer>> {
        let next = schedule.advance(unit)?;
        self.strategy.with_units(self.model, &[unit], next)
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
        let rope = m.rope(t)?;
        let tokens: Vec<u32> = mb.tokens.flatten_all()?.to_vec1()?;
        let schedule = Schedule::forward(m);
        let (inputs, saved_trunk) = self.trunk_forward(&schedule, &mb.tokens, &rope)?;
        let x = inputs.last().expect("the trunk's output").clone();
        let mask = ce_mask(&mb.target_mask, b, t, h);
        let heads = (0..h)
            .map(|k| HeadRows::new(&tokens, &mask, h, k, self.dev()))
            .collect::<Result<Vec<_>>>()?;
        // per-token CE stays on the device until one copy per micro-batch
        let mut ce_parts = Vec::new();
        let mut saved_heads = Vec::with_capacity(h);
        let mut head_lse = Vec::with_capacity(h);
        let mut saved_chunks = Vec::with_capacity(h);
        let om = self.lend(&schedule, Unit::Output)?;
        for (k, hr) in heads.iter().enumerate() {
            let hm = self.lend(&schedule, Unit::head(m, k))?;
            if hr.rows.is_empty() {
                saved_heads.push(None);
                head_lse.push(None);
                saved_chunks.push(Vec::new());
                continue;
            }
            let sv = hm
                .head(k)
                .forward_saved(&x, &rope, &self.ctx(1000 + k as u64))?;
            let (lse, chunks) = self.head_ce_forward(&om, &sv.out, hr, &mut ce_parts)?;
            saved_chunks.push(chunks);
            // the log-sum-exp is kept for the backward (which recomputes the logits when they
            // are not kept)
            head_lse.push(Some(lse));
            saved_heads.push(self.keep(m.layers.len() - 1 + k, sv));
        }
        let mut ce = vec![0f32; b * t * h];
        if !ce_parts.is_empty() {
            let flat: Vec<f32> = Tensor::cat(&ce_parts, 0)?.to_vec1()?;
            let mut it = flat.into_iter();
            for (k, hr) in heads.iter().enumerate() {
                for (&r, v) in hr.rows.iter().zip(&mut it) {
                    ce[r as usize * h + k] = v;
                }
            }
        }
        let values = match self.value_head {
            Some(vh) => {
                let v = vh.forward(&om.norm.forward(&x)?, &self.ctx(3000))?;
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
            heads,
            saved_trunk,
            saved_heads,
            head_lse,
            saved_chunks,
        })
    }

    /// The embedding and the trunk blocks over `tokens`: each trunk block's input and the trunk's
    /// output h_trunk (last), and each block's activations when they are kept.
    fn trunk_forward(
        &self,
        schedule: &Schedule,
        tokens: &Tensor,
        rope: &crate::model::rope::Rope,
    ) -> Result<(Vec<Tensor>, Vec<Option<BlockSaved>>)> {
        let n_trunk = self.model.layers.len() - 1;
        let mut inputs = Vec::with_capacity(n_trunk + 1);
        let mut saved = Vec::new();
        let mut x = self
            .lend(schedule, Unit::Embedding)?
            .embed(tokens)?
            .detach();
        for i in 0..n_trunk {
            inputs.push(x.clone());
            let mu = self.lend(schedule, Unit::Layer(i))?;
            let sv = mu.layers[i].forward_saved(&x, rope, &self.ctx(1 + i as u64))?;
            x = sv.out.clone();
            saved.push(self.keep(i, sv));
        }
        inputs.push(x);
        Ok((inputs, saved))
    }

    /// One head's CE on its valid rows `hr` of its block output `z` [B, T, D], through the shared norm
    /// and output projection of `om` in chunks: each chunk's per-row CE appended to `ce_parts`; returns
    /// the rows' log-sum-exp and, when every activation is kept ("none"), the chunks.
    fn head_ce_forward(
        &self,
        om: &Transformer,
        z: &Tensor,
        hr: &HeadRows,
        ce_parts: &mut Vec<Tensor>,
    ) -> Result<(Tensor, Vec<ChunkSaved>)> {
        let (b, t, d) = z.dims3()?;
        let zf = z.reshape((b * t, d))?;
        let mut lse_parts = Vec::new();
        let mut chunks = Vec::new();
        for (start, len) in hr.chunks(self.chunk_rows) {
            let c = ChunkSaved::compute(om, &zf, &hr.idx.narrow(0, start, len)?)?;
            let (ce, lse) = kernels::cross_entropy::ce_forward(
                self.model.kernels(),
                &c.logits,
                &hr.targets.narrow(0, start, len)?,
            )?;
            ce_parts.push(ce);
            lse_parts.push(lse);
            if self.checkpointing == ActivationCheckpointing::None {
                chunks.push(c);
            }
        }
        Ok((Tensor::cat(&lse_parts, 0)?, chunks))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelArgs;
    use candle_core::DType;

    /// "selective" on the first s blocks keeps trunk blocks 0..s (then the heads' blocks) and nothing
    /// of the others; unset, every block.
    #[test]
    fn selective_blocks_keeps_the_first_blocks_only() {
        let m = Transformer::random(
            ModelArgs::preset("tiny").unwrap(),
            3,
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        let n_trunk = m.layers.len() - 1;
        let (b, t) = (2, 9);
        let mb = MicroBatch {
            tokens: Tensor::new(&[[1u32, 5, 7, 2, 9, 4, 3, 8, 6]; 2], &Device::Cpu).unwrap(),
            target_mask: vec![1; b * t],
            rewards: None,
            pair_ids: None,
        };
        let kept = |selective_blocks| {
            let e = Engine {
                model: &m,
                value_head: None,
                chunk_rows: 7,
                seed: 0,
                train: true,
                checkpointing: ActivationCheckpointing::Selective,
                selective_blocks,
                strategy: &crate::parallel::strategy::NoSharding,
                detach_extra_heads: false,
            };
            let st = e.forward(&mb).unwrap();
            let trunk = st.saved_trunk.iter().map(Option::is_some);
            trunk
                .chain(st.saved_heads.iter().map(Option::is_some))
                .collect::<Vec<_>>()
        };
        let all = n_trunk + m.args.n_future_tokens;
        assert_eq!(kept(None), vec![true; all]);
        for s in [0, 1, n_trunk, n_trunk + 1, all] {
            let want: Vec<bool> = (0..all).map(|i| i < s).collect();
            assert_eq!(kept(Some(s)), want, "selective_blocks = {s}");
        }
    }
}
