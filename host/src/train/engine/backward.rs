//! The engine's backward: S = Σ c_ce·CE + Σ c_v·V back through the units in the schedule's order —
//! the output projection with each head it visits (CE backward in chunks of valid rows, then the head's
//! block), the value head, the trunk blocks top down, the embedding — each unit recomputed from its
//! input unless the forward kept its activations, and handed to the strategy once its gradients are done.

use super::{any_trainable, has_trainable, ChunkSaved, Engine, ForwardState};
use crate::kernels;
use crate::model::grads::Grads;
use crate::model::rope::Rope;
use crate::model::{Transformer, Unit};
use crate::train::schedule::Schedule;
use anyhow::{bail, Result};
use candle_core::{DType, Tensor, Var};

/// What every unit's backward in one call shares.
struct Pass<'s> {
    st: &'s ForwardState,
    rope: Rope,
    schedule: Schedule,
    /// Whether any trunk weight (embedding or trunk block) trains: the heads then pass dh on.
    trunk_trainable: bool,
}

impl Engine<'_> {
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
        let n_trunk = m.layers.len() - 1;
        let trunk_trainable = any_trainable(&m.tok_embeddings)
            || m.layers[..n_trunk].iter().any(|b| has_trainable(b));
        let shared_trainable = has_trainable(&m.norm) || has_trainable(&m.output);
        // a head is visited when its block trains or its gradient flows on (into shared or trunk
        // weights); the head scan runs once per backward, not once per visit query
        let head_trains: Vec<bool> = (0..h).map(|k| has_trainable(m.head(k))).collect();
        let visits = |k: usize| {
            head_trains[k] || (!self.detached(k) && (trunk_trainable || shared_trainable))
        };
        // the backward's order (train/schedule.rs): output, the heads it visits, trunk blocks top
        // down, embedding
        let schedule = Schedule::backward(
            m,
            &visits,
            trunk_trainable,
            any_trainable(&m.tok_embeddings),
        );
        let pass = Pass {
            st,
            rope: m.rope(t)?,
            schedule,
            trunk_trainable,
        };
        let mut dh = Tensor::zeros((b, t, m.args.dim), DType::F32, self.dev())?;
        let om = self.lend(&pass.schedule, Unit::Output)?;
        for k in (0..h).filter(|&k| visits(k)) {
            // no coefficients (c_ce empty): an empty, all-zero slice, so the head only flushes
            let coef_k: Vec<f32> = if c_ce.is_empty() {
                Vec::new()
            } else {
                (0..b * t).map(|r| c_ce[r * h + k]).collect()
            };
            if let Some(g) = self.head_backward(&pass, &om, k, &coef_k, grads)? {
                dh = (dh + g.to_dtype(DType::F32)?)?;
            }
        }
        if let Some(cv) = c_v {
            if let Some(g) = self.value_backward(st, &om, cv, grads)? {
                dh = (dh + g)?;
            }
        }
        self.flush(Unit::Output, grads)?;
        if !trunk_trainable {
            return Ok(());
        }
        drop(om);
        self.trunk_backward(&pass, dh.to_dtype(m.dtype())?, grads)
    }

    /// `training.detach_extra_heads`, for head `k`: its loss trains its own block only.
    fn detached(&self, k: usize) -> bool {
        self.detach_extra_heads && k > 0
    }

    /// Head `k`'s part of the backward (coefficients `coef_k`, [B·T], or empty for none): its CE through the output
    /// projection (`om`, the lent output unit), then its block; returns dS/dh_trunk through this head
    /// (None when nothing below needs it, or the head's coefficients are all zero).
    fn head_backward(
        &self,
        p: &Pass,
        om: &Transformer,
        k: usize,
        coef_k: &[f32],
        grads: &mut Grads,
    ) -> Result<Option<Tensor>> {
        let m = self.model;
        let (b, t, _) = p.st.shape;
        let n_trunk = m.layers.len() - 1;
        let unit = Unit::head(m, k);
        let hm = self.lend(&p.schedule, unit)?;
        if coef_k.iter().all(|&c| c == 0.0) {
            self.flush(unit, grads)?;
            return Ok(None);
        }
        let head = hm.head(k);
        let head_prefix = if k == 0 {
            format!("layers.{n_trunk}.")
        } else {
            format!("extra_heads.{}.", k - 1)
        };
        // 1. the head block's activations: kept from the forward, or recomputed
        let h_trunk = &p.st.unit_inputs[n_trunk];
        let recomputed;
        let sv = match p.st.saved_heads.get(k).and_then(Option::as_ref) {
            Some(sv) => sv,
            None => {
                recomputed = head.forward_saved(h_trunk, &p.rope, &self.ctx(1000 + k as u64))?;
                &recomputed
            }
        };
        // 2. vocabulary projection + CE backward, chunked: dz of the valid rows
        let dz = self.output_ce_backward(p.st, om, k, coef_k, &sv.out, grads)?;
        // 3. the head block's backward
        let hg = head.backward(
            sv,
            &dz.reshape((b, t, m.args.dim))?,
            &p.rope,
            p.trunk_trainable && !self.detached(k),
            &head_prefix,
        )?;
        for (name, g) in hg.params {
            grads.add(&name, &g)?;
        }
        self.flush(unit, grads)?;
        Ok(hg.dx)
    }

    /// Head `k`'s CE backward through the shared norm and output projection, chunk by chunk over its
    /// valid rows of `z` (the head block's output): dS/dz [B·T, D] (zero on invalid rows). The norm's and
    /// output's gradients go to `grads` unless the head is detached.
    fn output_ce_backward(
        &self,
        st: &ForwardState,
        om: &Transformer,
        k: usize,
        coef_k: &[f32],
        z: &Tensor,
        grads: &mut Grads,
    ) -> Result<Tensor> {
        let m = self.model;
        let (b, t, _) = st.shape;
        let zf = z.reshape((b * t, m.args.dim))?;
        let hr = &st.heads[k];
        let coef_rows: Vec<f32> = hr.rows.iter().map(|&r| coef_k[r as usize]).collect();
        let coef_rows = Tensor::new(coef_rows.as_slice(), self.dev())?;
        let Some(lse) = &st.head_lse[k] else {
            bail!("head {k} has coefficients but no valid rows");
        };
        let mut dz_rows = Vec::new();
        let mut pg = Vec::new();
        for (i, (start, len)) in hr.chunks(self.chunk_rows).enumerate() {
            let recomputed;
            let ChunkSaved {
                z: zc,
                normed: nc,
                logits,
                out: lsv,
            } = match st.saved_chunks.get(k).and_then(|c| c.get(i)) {
                Some(c) => c,
                None => {
                    recomputed = ChunkSaved::compute(om, &zf, &hr.idx.narrow(0, start, len)?)?;
                    &recomputed
                }
            };
            let dlogits = kernels::cross_entropy::ce_backward(
                m.kernels(),
                logits,
                &hr.targets.narrow(0, start, len)?,
                &lse.narrow(0, start, len)?,
                &coef_rows.narrow(0, start, len)?,
            )?;
            let dn = om
                .output
                .backward(nc, lsv, &dlogits, true, "output.", &mut pg)?
                .expect("dx was asked for");
            let (dzc, dg) = om.norm.backward(zc, &dn)?;
            if let Some(dg) = dg {
                pg.push(("norm.weight".to_string(), dg));
            }
            dz_rows.push(dzc);
        }
        if !self.detached(k) {
            for (name, g) in pg {
                grads.add(&name, &g)?;
            }
        }
        Ok(kernels::scatter_rows(
            m.kernels(),
            &Tensor::cat(&dz_rows, 0)?,
            &hr.idx,
            b * t,
        )?)
    }

    /// The value head's part (coefficients `cv`, [B·T]; autograd through the shared norm of `om` and
    /// the value head): its gradients into `grads`; returns dS/dh_trunk in f32 (None without a value
    /// head or when `cv` is all zero).
    fn value_backward(
        &self,
        st: &ForwardState,
        om: &Transformer,
        cv: &[f32],
        grads: &mut Grads,
    ) -> Result<Option<Tensor>> {
        let Some(vh) = self.value_head else {
            return Ok(None);
        };
        if cv.iter().all(|&c| c == 0.0) {
            return Ok(None);
        }
        let (b, t, _) = st.shape;
        let h_trunk = &st.unit_inputs[self.model.layers.len() - 1];
        let hvar = Var::from_tensor(h_trunk)?;
        let v = vh.forward(&om.norm.forward(hvar.as_tensor())?, &self.ctx(3000))?;
        let s = (v * Tensor::from_slice(cv, (b, t), self.dev())?)?.sum_all()?;
        let store = s.backward()?;
        grads.absorb(vh, "value_head.", &store)?;
        grads.absorb(&om.norm, "norm.", &store)?;
        // detached: autograd's dL/dh still refers to this step's forward graph, which would otherwise
        // flow into every trunk gradient and the optimiser's state
        Ok(store
            .get(hvar.as_tensor())
            .map(|g| g.to_dtype(DType::F32).map(|g| g.detach()))
            .transpose()?)
    }

    /// The trunk blocks top down from dS/dh_trunk `dh` (in the model's dtype), then the embedding when
    /// it trains; each block recomputed from its input unless kept.
    fn trunk_backward(&self, p: &Pass, mut dh: Tensor, grads: &mut Grads) -> Result<()> {
        let m = self.model;
        let (b, t, _) = p.st.shape;
        let embedding_trains = any_trainable(&m.tok_embeddings);
        for i in (0..m.layers.len() - 1).rev() {
            let mu = self.lend(&p.schedule, Unit::Layer(i))?;
            let block = &mu.layers[i];
            let recomputed;
            let sv = match p.st.saved_trunk.get(i).and_then(Option::as_ref) {
                Some(sv) => sv,
                None => {
                    recomputed = block.forward_saved(
                        &p.st.unit_inputs[i],
                        &p.rope,
                        &self.ctx(1 + i as u64),
                    )?;
                    &recomputed
                }
            };
            let need_dx = i > 0 || embedding_trains;
            let bg = block.backward(sv, &dh, &p.rope, need_dx, &format!("layers.{i}."))?;
            for (name, g) in bg.params {
                grads.add(&name, &g)?;
            }
            self.flush(Unit::Layer(i), grads)?;
            dh = match bg.dx {
                Some(g) => g,
                None => return Ok(()), // nothing below needs this block's input gradient
            };
        }
        if embedding_trains {
            let em = self.lend(&p.schedule, Unit::Embedding)?;
            let tokens = Tensor::from_slice(&p.st.tokens, (b, t), self.dev())?;
            let s =
                (em.embed(&tokens)?.to_dtype(DType::F32)? * dh.to_dtype(DType::F32)?)?.sum_all()?;
            let store = s.backward()?;
            if let Some(g) = store.get(em.tok_embeddings.tensor()) {
                grads.add("tok_embeddings.weight", g)?;
            }
            self.flush(Unit::Embedding, grads)?;
        }
        Ok(())
    }
}
