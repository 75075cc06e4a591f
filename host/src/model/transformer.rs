//! The Meta-layout multi-token-prediction Transformer (design.md §1).
//!
//! h = tok_embeddings(x); h_trunk = trunk(h); for every head i (in parallel, on the SAME h_trunk):
//! z_i = head_i(h_trunk); logits_i = output(norm(z_i)). `layers` holds the trunk blocks and, last, head 0;
//! `extra_heads` holds heads 1..H−1. `norm` and `output` are shared by all heads (output not tied).

use super::block::{causal_mask, TransformerBlock};
use super::forward_ctx::ForwardCtx;
use super::lora::{LoraConfig, LoraLinear};
use super::norm::RmsNorm;
use super::param::{Param, ParamGroup, VisitParams};
use super::rope::Rope;
use super::weight_map::WeightMap;
use super::ModelArgs;
use crate::kernels::Kernels;
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

/// The MTP Transformer with optional LoRA adapters in every block.
#[derive(Debug, Clone)]
pub struct Transformer {
    /// The shape.
    pub args: ModelArgs,
    /// Token embedding [V, D].
    pub tok_embeddings: Param,
    /// Trunk blocks followed by head 0 (n_layers − H + 1 blocks).
    pub layers: Vec<TransformerBlock>,
    /// Heads 1..H−1.
    pub extra_heads: Vec<TransformerBlock>,
    /// Shared final norm.
    pub norm: RmsNorm,
    /// Shared output projection [V, D].
    pub output: LoraLinear,
    /// The LoRA settings, once adapters are added.
    pub lora: Option<LoraConfig>,
}

/// Inputs shared by every block of one forward pass: RoPE tables and the causal mask.
#[derive(Debug, Clone)]
pub struct BlockInputs {
    /// RoPE tables for the sequence.
    pub rope: Rope,
    /// Additive causal mask [T, T].
    pub mask: Tensor,
}

impl Transformer {
    /// Builds the model from a complete checkpoint (Meta key names); all weights start frozen, and any
    /// tensor left unused is an error.
    pub fn load(args: ModelArgs, mut w: WeightMap) -> Result<Self> {
        args.validate()?;
        let (d, v) = (args.dim, args.vocab_size);
        let tok_embeddings =
            Param::frozen(w.take("tok_embeddings.weight", &[v, d])?, ParamGroup::Trunk);
        let n_list = args.n_trunk() + 1;
        let layers = (0..n_list)
            .map(|i| {
                let group = if i == n_list - 1 {
                    ParamGroup::Heads
                } else {
                    ParamGroup::Trunk
                };
                TransformerBlock::load(&mut w, &format!("layers.{i}."), &args, group)
            })
            .collect::<Result<Vec<_>>>()?;
        let extra_heads = (0..args.n_future_tokens - 1)
            .map(|j| {
                TransformerBlock::load(
                    &mut w,
                    &format!("extra_heads.{j}."),
                    &args,
                    ParamGroup::Heads,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm {
            weight: Param::frozen(w.take("norm.weight", &[d])?, ParamGroup::Heads),
            eps: args.norm_eps,
            kernels: Default::default(),
        };
        let output = LoraLinear::new(Param::frozen(
            w.take("output.weight", &[v, d])?,
            ParamGroup::Heads,
        ));
        w.finish()?;
        Ok(Transformer {
            args,
            tok_embeddings,
            layers,
            extra_heads,
            norm,
            output,
            lora: None,
        })
    }

    /// A randomly initialised model of shape `args` (seeded), in `dtype` on `dev`.
    pub fn random(args: ModelArgs, seed: u64, dtype: DType, dev: &Device) -> Result<Self> {
        let w = super::init::random_weights(&args, seed, dtype)?;
        Transformer::load(args, WeightMap::new(w, "random init", dtype, dev))
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.tok_embeddings.tensor().device()
    }

    /// The compute dtype of the weights.
    pub fn dtype(&self) -> DType {
        self.tok_embeddings.tensor().dtype()
    }

    /// Which kernels the model's ops take ([`Kernels`]; `Fused` unless [`Transformer::set_kernels`]
    /// said otherwise).
    pub fn kernels(&self) -> Kernels {
        self.norm.kernels
    }

    /// Sets the kernels every module of the model uses (`runtime.fused_kernels`): its norms, linear
    /// layers (with their adapters' dropout), attention and feed-forward blocks, head blocks included.
    pub fn set_kernels(&mut self, k: Kernels) {
        for b in self.layers.iter_mut().chain(self.extra_heads.iter_mut()) {
            b.set_kernels(k);
        }
        self.norm.kernels = k;
        self.output.kernels = k;
    }

    /// Head block k (0 = next token).
    pub fn head(&self, k: usize) -> &TransformerBlock {
        if k == 0 {
            &self.layers[self.layers.len() - 1]
        } else {
            &self.extra_heads[k - 1]
        }
    }

    /// RoPE tables and causal mask for sequences of length `t`.
    pub fn block_inputs(&self, t: usize) -> Result<BlockInputs> {
        Ok(BlockInputs {
            rope: self.rope(t)?,
            mask: causal_mask(t, self.device())?,
        })
    }

    /// The RoPE tables for `t` positions (shared between calls: [`Rope::shared`]) — what the
    /// block-wise engine needs; its attention is causal by construction, so it builds no mask.
    pub fn rope(&self, t: usize) -> Result<Rope> {
        if t > self.args.max_seq_len {
            bail!(
                "sequence length {t} exceeds the model's max_seq_len {}",
                self.args.max_seq_len
            );
        }
        Ok(Rope::shared(
            self.args.head_dim(),
            self.args.rope_theta,
            t,
            self.device(),
        )?)
    }

    /// Token embedding: tokens [B, T] (u32) → [B, T, D].
    pub fn embed(&self, tokens: &Tensor) -> Result<Tensor> {
        let (b, t) = tokens.dims2()?;
        let flat = tokens.flatten_all()?;
        let e = self.tok_embeddings.tensor().index_select(&flat, 0)?;
        Ok(e.reshape((b, t, self.args.dim))?)
    }

    /// h_trunk = trunk(tok_embeddings(x)): the input every head shares.
    pub fn trunk(&self, tokens: &Tensor, bi: &BlockInputs, ctx: &ForwardCtx) -> Result<Tensor> {
        let mut h = self.embed(tokens)?;
        for block in &self.layers[..self.layers.len() - 1] {
            h = block.forward(&h, &bi.rope, &bi.mask, ctx)?;
        }
        Ok(h)
    }

    /// logits = output(norm(z)) for a head's output z [B, T, D] → [B, T, V].
    pub fn logits(&self, z: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        self.output.forward(&self.norm.forward(z)?, ctx)
    }

    /// Per-head logits [B, T, V] for tokens [B, T]; for small inputs (training uses the block-wise engine).
    pub fn forward(&self, tokens: &Tensor, ctx: &ForwardCtx) -> Result<Vec<Tensor>> {
        let bi = self.block_inputs(tokens.dim(1)?)?;
        let h = self.trunk(tokens, &bi, ctx)?;
        (0..self.args.n_future_tokens)
            .map(|k| self.logits(&self.head(k).forward(&h, &bi.rope, &bi.mask, ctx)?, ctx))
            .collect()
    }

    /// Adds LoRA adapters to the targeted linears of EVERY block (trunk and heads) and freezes all
    /// non-LoRA parameters. A matrices are seeded from `seed` and the layer's name.
    pub fn add_lora(&mut self, cfg: &LoraConfig, seed: u64) -> Result<()> {
        cfg.validate()?;
        if self.lora.is_some() {
            bail!("the model already has LoRA adapters");
        }
        let targets = cfg.targets()?;
        let n_list = self.layers.len();
        let blocks = self.layers.iter_mut().chain(self.extra_heads.iter_mut());
        for (i, block) in blocks.enumerate() {
            for (name, lin) in block.linears_mut() {
                if targets.contains(&name) {
                    let key = if i < n_list {
                        format!("layers.{i}.{name}")
                    } else {
                        format!("extra_heads.{}.{name}", i - n_list)
                    };
                    lin.add_lora(cfg, seed ^ fnv1a(&key))?;
                }
            }
        }
        self.visit_mut("", &mut |_, p| {
            if p.group() != ParamGroup::Lora {
                let _ = p.set_trainable(false);
            }
        });
        self.lora = Some(cfg.clone());
        Ok(())
    }

    /// Folds every adapter into its base weight (W ← W + s·B·A) or undoes it.
    pub fn set_lora_merged(&mut self, merged: bool) -> Result<()> {
        for block in self.layers.iter_mut().chain(self.extra_heads.iter_mut()) {
            for (_, lin) in block.linears_mut() {
                if merged {
                    lin.merge()?
                } else {
                    lin.unmerge()?
                }
            }
        }
        Ok(())
    }

    /// Makes exactly the parameters of `groups` trainable (LoRA only; LoRA + value head; full = trunk +
    /// heads), freezing the rest.
    pub fn set_trainable_groups(&mut self, groups: &[ParamGroup]) -> Result<()> {
        let mut result = Ok(());
        self.visit_mut("", &mut |name, p| {
            if let Err(e) = p.set_trainable(groups.contains(&p.group())) {
                result = Err(e.context(format!("parameter {name}")));
            }
        });
        result
    }

    /// (total, trainable) scalar counts of the allocated parameters.
    pub fn param_counts(&self) -> (u64, u64) {
        let (mut total, mut trainable) = (0u64, 0u64);
        self.visit("", &mut |_, p| {
            total += p.numel() as u64;
            if p.is_trainable() {
                trainable += p.numel() as u64;
            }
        });
        (total, trainable)
    }
}

/// FNV-1a hash of a name: a stable per-layer seed offset.
pub fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

impl VisitParams for Transformer {
    fn visit(&self, p: &str, f: &mut dyn FnMut(&str, &Param)) {
        f(&format!("{p}tok_embeddings.weight"), &self.tok_embeddings);
        for (i, b) in self.layers.iter().enumerate() {
            b.visit(&format!("{p}layers.{i}."), f);
        }
        for (j, b) in self.extra_heads.iter().enumerate() {
            b.visit(&format!("{p}extra_heads.{j}."), f);
        }
        self.norm.visit(&format!("{p}norm."), f);
        self.output.visit(&format!("{p}output."), f);
    }

    fn visit_mut(&mut self, p: &str, f: &mut dyn FnMut(&str, &mut Param)) {
        f(
            &format!("{p}tok_embeddings.weight"),
            &mut self.tok_embeddings,
        );
        for (i, b) in self.layers.iter_mut().enumerate() {
            b.visit_mut(&format!("{p}layers.{i}."), f);
        }
        for (j, b) in self.extra_heads.iter_mut().enumerate() {
            b.visit_mut(&format!("{p}extra_heads.{j}."), f);
        }
        self.norm.visit_mut(&format!("{p}norm."), f);
        self.output.visit_mut(&format!("{p}output."), f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{LoraConfig, ModelArgs};

    /// Every module's kernel choice, as (where, choice).
    fn choices(m: &Transformer) -> Vec<(String, Kernels)> {
        let mut out = vec![
            ("norm".to_string(), m.norm.kernels),
            ("output".to_string(), m.output.kernels),
        ];
        for (i, b) in m.layers.iter().chain(&m.extra_heads).enumerate() {
            let (at, ff) = (&b.attention, &b.feed_forward);
            out.extend(
                [
                    ("attention", at.kernels),
                    ("feed_forward", ff.kernels),
                    ("attention_norm", b.attention_norm.kernels),
                    ("ffn_norm", b.ffn_norm.kernels),
                ]
                .map(|(n, k)| (format!("block {i} {n}"), k)),
            );
            for (n, l) in [
                ("wq", &at.wq),
                ("wk", &at.wk),
                ("wv", &at.wv),
                ("wo", &at.wo),
                ("w1", &ff.w1),
                ("w2", &ff.w2),
                ("w3", &ff.w3),
            ] {
                out.push((format!("block {i} {n}"), l.kernels));
            }
        }
        out
    }

    #[test]
    fn the_kernel_choice_belongs_to_each_model_and_reaches_every_module() -> Result<()> {
        let args = ModelArgs::preset("tiny").expect("tiny preset");
        let mut a = Transformer::random(args.clone(), 1, DType::F32, &Device::Cpu)?;
        let b = Transformer::random(args, 1, DType::F32, &Device::Cpu)?;
        a.add_lora(&LoraConfig::default(), 0)?;
        a.set_kernels(Kernels::Plain);
        assert_eq!(a.kernels(), Kernels::Plain);
        for (at, k) in choices(&a) {
            assert_eq!(k, Kernels::Plain, "{at}");
        }
        // another model in the same process keeps its own (the default)
        for (at, k) in choices(&b) {
            assert_eq!(k, Kernels::Fused, "{at}");
        }
        // the fused path is for CUDA f32/bf16 only, and never for Plain
        assert!(!Kernels::Fused.fuse(&Device::Cpu, DType::F32));
        assert!(!Kernels::Plain.fuse(&Device::Cpu, DType::BF16));
        Ok(())
    }
}
