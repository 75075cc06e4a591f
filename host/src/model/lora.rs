//! LoRA (design.md §3): `LoraLinear` — the linear layer of every Transformer block — is a base weight W
//! (frozen under LoRA) plus an optional low-rank adapter:  y = W·x + s · B·(A·dropout(x)),
//! s = α/r (or α/√r with rsLoRA); A ∈ R^{r×in} Kaiming-uniform (bound 1/√in), B ∈ R^{out×r} zeros.

use super::forward_ctx::ForwardCtx;
use super::frozen_linear::{frozen_linear, trainable_linear};
use super::param::{Param, ParamGroup, VisitParams};
use super::ModelArgs;
use anyhow::{bail, Result};
use candle_core::{DType, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Every linear layer LoRA can target, in block order.
pub const ALL_TARGETS: [&str; 7] = ["wq", "wk", "wv", "wo", "w1", "w2", "w3"];
/// The default targets (attention projections).
pub const DEFAULT_TARGETS: [&str; 4] = ["wq", "wk", "wv", "wo"];
/// Hugging Face's names of [`ALL_TARGETS`], in the same order (accepted as synonyms; PEFT exports use
/// them).
pub const HF_TARGETS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "down_proj",
    "up_proj",
];

/// A string or a list of strings, as a list.
fn one_or_many<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// LoRA hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraConfig {
    /// Rank r.
    pub rank: usize,
    /// α; the adapter is scaled by α/r (or α/√r with `rslora`).
    pub alpha: f64,
    /// Dropout probability on the adapter's input.
    #[serde(default)]
    pub dropout: f32,
    /// Target layer names (wq wk wv wo w1 w2 w3, or `all-linear`), applied in every block; a single
    /// name may be given as a string (`target_modules = "all-linear"`, as in PEFT).
    #[serde(default = "default_targets", deserialize_with = "one_or_many")]
    pub target_modules: Vec<String>,
    /// Rank-stabilised scaling α/√r.
    #[serde(default)]
    pub rslora: bool,
    /// Start from this PEFT adapter directory (`adapter_config.json` + `adapter_model.safetensors`, HF
    /// module names, e.g. trained with `peft` or written by `wmtp export --format peft`) instead of B = 0;
    /// its r, α, rslora and targets must equal these. Empty: a fresh adapter.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub init_from: String,
}

fn default_targets() -> Vec<String> {
    DEFAULT_TARGETS.iter().map(|s| s.to_string()).collect()
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
            target_modules: default_targets(),
            rslora: false,
            init_from: String::new(),
        }
    }
}

impl LoraConfig {
    /// The adapter scale s: α/r, or α/√r with rsLoRA.
    pub fn scale(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }

    /// The expanded, validated target list (`all-linear` → all seven; HF names such as `q_proj` →
    /// their Meta names), in block order.
    pub fn targets(&self) -> Result<Vec<&'static str>> {
        let mut on = [false; 7];
        for t in &self.target_modules {
            if t == "all-linear" {
                on = [true; 7];
            } else if let Some(i) = ALL_TARGETS
                .iter()
                .position(|a| a == t)
                .or_else(|| HF_TARGETS.iter().position(|a| a == t))
            {
                on[i] = true;
            } else {
                bail!("unknown LoRA target module `{t}` (expected one of {ALL_TARGETS:?}, their HF names {HF_TARGETS:?}, or `all-linear`)");
            }
        }
        if !on.iter().any(|&b| b) {
            bail!("LoRA `target_modules` is empty");
        }
        Ok(ALL_TARGETS
            .iter()
            .zip(on)
            .filter(|(_, b)| *b)
            .map(|(t, _)| *t)
            .collect())
    }

    /// Checks rank, α, dropout and targets.
    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            bail!("LoRA `rank` must be positive");
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            bail!("LoRA `alpha` must be positive");
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("LoRA `dropout` must be in [0, 1)");
        }
        self.targets().map(|_| ())
    }

    /// Trainable LoRA scalars for a model shape, computed not allocated:
    /// n_layers · Σ_targets r·(in + out)  (8,388,608 for Meta 7B, r = 8, wq wk wv wo).
    pub fn trainable_count(&self, args: &ModelArgs) -> Result<u64> {
        let per_block: u64 = self
            .targets()?
            .iter()
            .map(|t| {
                let (i, o) = args.linear_shape(t).expect("targets are validated");
                (self.rank * (i + o)) as u64
            })
            .sum();
        Ok(args.n_layers as u64 * per_block)
    }
}

/// A low-rank adapter: A [r, in], B [out, r], scale s, input dropout p.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    /// A ∈ R^{r×in} (`lora_A.weight`).
    pub a: Param,
    /// B ∈ R^{out×r} (`lora_B.weight`).
    pub b: Param,
    /// s = α/r or α/√r.
    pub scale: f64,
    /// Dropout on the adapter input.
    pub dropout: f32,
}

/// A linear layer y = W·x (no bias) with an optional LoRA adapter; W is frozen or trainable.
#[derive(Debug, Clone)]
pub struct LoraLinear {
    /// Base weight W [out, in].
    pub weight: Param,
    /// The adapter, when LoRA targets this layer.
    pub lora: Option<LoraAdapter>,
    merged: bool,
    /// Fused kernels or plain ops (the model's, [`crate::model::Transformer::set_kernels`]).
    pub kernels: crate::kernels::Kernels,
}

/// y = x·Wᵀ, taking the frozen path (no weight gradient) unless W is trainable.
pub fn apply_weight(x: &Tensor, w: &Param) -> candle_core::Result<Tensor> {
    if w.is_trainable() {
        trainable_linear(x, w.tensor())
    } else {
        frozen_linear(x, w.tensor())
    }
}

impl LoraLinear {
    /// A plain linear layer with weight `w`.
    pub fn new(weight: Param) -> Self {
        LoraLinear {
            weight,
            lora: None,
            merged: false,
            kernels: Default::default(),
        }
    }

    /// Adds an adapter (A Kaiming-uniform from `seed`, B zero) and freezes W.
    pub fn add_lora(&mut self, cfg: &LoraConfig, seed: u64) -> Result<()> {
        if self.lora.is_some() {
            bail!("layer already has a LoRA adapter");
        }
        let (out_f, in_f) = self.weight.tensor().dims2()?;
        let dev = self.weight.tensor().device().clone();
        let bound = 1.0 / (in_f as f64).sqrt();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let a: Vec<f32> = (0..cfg.rank * in_f)
            .map(|_| rng.random_range(-bound..bound) as f32)
            .collect();
        let a = Tensor::from_vec(a, (cfg.rank, in_f), &dev)?;
        let b = Tensor::zeros((out_f, cfg.rank), DType::F32, &dev)?;
        self.weight.set_trainable(false)?;
        self.lora = Some(LoraAdapter {
            a: Param::trainable(a, ParamGroup::Lora)?,
            b: Param::trainable(b, ParamGroup::Lora)?,
            scale: cfg.scale(),
            dropout: cfg.dropout,
        });
        Ok(())
    }

    /// Whether the adapter is folded into W.
    pub fn is_merged(&self) -> bool {
        self.merged
    }

    /// s·B·A in W's dtype.
    fn delta(&self, l: &LoraAdapter) -> Result<Tensor> {
        let ba =
            l.b.tensor()
                .to_dtype(DType::F32)?
                .matmul(&l.a.tensor().to_dtype(DType::F32)?)?;
        Ok((ba * l.scale)?)
    }

    /// W ← W + s·B·A; the forward then skips the adapter (same output to rounding).
    pub fn merge(&mut self) -> Result<()> {
        if let (Some(l), false) = (&self.lora, self.merged) {
            let w = self.weight.tensor();
            let merged = (w.to_dtype(DType::F32)? + self.delta(l)?)?.to_dtype(w.dtype())?;
            self.weight.set_value(merged)?;
            self.merged = true;
        }
        Ok(())
    }

    /// W ← W − s·B·A, undoing [`LoraLinear::merge`].
    pub fn unmerge(&mut self) -> Result<()> {
        if let (Some(l), true) = (&self.lora, self.merged) {
            let w = self.weight.tensor();
            let base = (w.to_dtype(DType::F32)? - self.delta(l)?)?.to_dtype(w.dtype())?;
            self.weight.set_value(base)?;
            self.merged = false;
        }
        Ok(())
    }

    /// y = x·Wᵀ + s·(dropout(x)·Aᵀ)·Bᵀ (the adapter term is skipped when merged), differentiable (candle
    /// autograd). The adapter runs in x's dtype (A, B cast to it), as [`LoraLinear::forward_saved`] does.
    pub fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let y = apply_weight(x, &self.weight)?;
        match (&self.lora, self.merged) {
            (Some(l), false) => {
                let h = ctx.dropout(self.kernels, x, l.dropout)?;
                let dt = x.dtype();
                let a = trainable_linear(&h, &l.a.tensor().to_dtype(dt)?)?;
                let low = trainable_linear(&a, &(l.b.tensor() * l.scale)?.to_dtype(dt)?)?;
                Ok((y + low)?)
            }
            _ => Ok(y),
        }
    }

    /// The same forward with no autograd, keeping what [`LoraLinear::backward`] needs.
    pub fn forward_saved(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<(Tensor, LinearSaved)> {
        let (x2, lead) = flat(x)?;
        let dt = x.dtype();
        let w = self.weight.tensor().detach().to_dtype(dt)?;
        let mut y = x2.matmul(&w.t()?)?;
        let mut saved = LinearSaved::default();
        if let (Some(l), false) = (&self.lora, self.merged) {
            let mask = ctx.dropout_mask(self.kernels, &x2, l.dropout)?;
            let xd = match &mask {
                Some(m) => (&x2 * m)?,
                None => x2.clone(),
            };
            let a = l.a.tensor().detach().to_dtype(dt)?;
            let bs = (l.b.tensor().detach() * l.scale)?.to_dtype(dt)?;
            let ax = xd.matmul(&a.t()?)?;
            y = crate::kernels::matmul_acc(self.kernels, y, &ax, &bs, true)?;
            saved = LinearSaved {
                ax: Some(ax),
                xd: mask.is_some().then_some(xd),
                mask,
            };
        }
        let mut shape = lead;
        shape.push(y.dim(1)?);
        Ok((y.reshape(shape)?, saved))
    }

    /// Backward of [`LoraLinear::forward_saved`] on input `x` for upstream gradient `dy`: dL/dx when
    /// `need_dx`, and the gradients of the trainable parameters pushed to `grads` as (`prefix` + name, g):
    /// dW = dyᵀ·x; dB = s·dyᵀ·(x̃·Aᵀ); dA = s·(dy·B)ᵀ·x̃; dx = dy·W + s·((dy·B)·A) ⊙ mask.
    pub fn backward(
        &self,
        x: &Tensor,
        saved: &LinearSaved,
        dy: &Tensor,
        need_dx: bool,
        prefix: &str,
        grads: &mut Vec<(String, Tensor)>,
    ) -> Result<Option<Tensor>> {
        let acc = if need_dx {
            Accumulate::Fresh
        } else {
            Accumulate::NoDx
        };
        self.backward_into(x, saved, dy, acc, prefix, grads)
    }

    /// [`LoraLinear::backward`] with dL/dx added to `acc` (consumed; nothing else may hold it): the
    /// products' epilogues do the sum on the GPU ([`crate::kernels::matmul_acc`]), so the gradients of
    /// layers that share an input (wq wk wv; w1 w3) are summed without a separate pass.
    pub fn backward_add(
        &self,
        x: &Tensor,
        saved: &LinearSaved,
        dy: &Tensor,
        acc: Tensor,
        prefix: &str,
        grads: &mut Vec<(String, Tensor)>,
    ) -> Result<Tensor> {
        self.backward_into(x, saved, dy, Accumulate::Into(acc), prefix, grads)?
            .ok_or_else(|| anyhow::anyhow!("backward_add: no input gradient"))
    }

    fn backward_into(
        &self,
        x: &Tensor,
        saved: &LinearSaved,
        dy: &Tensor,
        acc: Accumulate,
        prefix: &str,
        grads: &mut Vec<(String, Tensor)>,
    ) -> Result<Option<Tensor>> {
        let (x2, lead) = flat(x)?;
        let dt = x.dtype();
        let (dy2, _) = flat(&dy.to_dtype(dt)?)?;
        let w = self.weight.tensor().detach().to_dtype(dt)?;
        let mut dx = match acc {
            Accumulate::NoDx => None,
            Accumulate::Fresh => Some(dy2.matmul(&w)?),
            Accumulate::Into(a) => Some(crate::kernels::matmul_acc(
                self.kernels,
                flat(&a.to_dtype(dt)?)?.0,
                &dy2,
                &w,
                false,
            )?),
        };
        if self.weight.is_trainable() {
            grads.push((format!("{prefix}weight"), dy2.t()?.matmul(&x2)?));
        }
        if let (Some(l), false) = (&self.lora, self.merged) {
            let Some(ax) = &saved.ax else {
                bail!("LoRA backward without the forward's saved activations")
            };
            let bs = (l.b.tensor().detach() * l.scale)?.to_dtype(dt)?;
            let dyb = dy2.matmul(&bs)?; // [N, r]
            if l.b.is_trainable() {
                let db = (dy2.t()?.matmul(ax)? * l.scale)?;
                grads.push((format!("{prefix}lora_B.weight"), db));
            }
            if l.a.is_trainable() {
                let xd = saved.xd.as_ref().unwrap_or(&x2);
                grads.push((format!("{prefix}lora_A.weight"), dyb.t()?.matmul(xd)?));
            }
            if let Some(d) = dx.take() {
                let a = l.a.tensor().detach().to_dtype(dt)?;
                dx = Some(match &saved.mask {
                    Some(m) => crate::kernels::add(self.kernels, &d, &(dyb.matmul(&a)? * m)?)?,
                    None => crate::kernels::matmul_acc(self.kernels, d, &dyb, &a, false)?,
                });
            }
        }
        match dx {
            Some(d) => {
                let mut shape = lead;
                shape.push(d.dim(1)?);
                Ok(Some(d.reshape(shape)?))
            }
            None => Ok(None),
        }
    }
}

/// Where [`LoraLinear::backward_into`] puts dL/dx: nowhere, a fresh tensor, or added to one.
enum Accumulate {
    NoDx,
    Fresh,
    Into(Tensor),
}

/// What [`LoraLinear::backward`] needs from the forward besides the input: A·x̃, and the dropout mask and
/// dropped-out input when the adapter has dropout.
#[derive(Debug, Default)]
pub struct LinearSaved {
    ax: Option<Tensor>,
    xd: Option<Tensor>,
    mask: Option<Tensor>,
}

/// x [..., k] as a contiguous [N, k] matrix, and the leading dims.
fn flat(x: &Tensor) -> Result<(Tensor, Vec<usize>)> {
    let dims = x.dims();
    let Some((&k, lead)) = dims.split_last() else {
        bail!("linear: input has no feature dimension")
    };
    let n: usize = lead.iter().product();
    Ok((x.reshape((n, k))?.contiguous()?, lead.to_vec()))
}

impl VisitParams for LoraLinear {
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param)) {
        f(&format!("{prefix}weight"), &self.weight);
        if let Some(l) = &self.lora {
            f(&format!("{prefix}lora_A.weight"), &l.a);
            f(&format!("{prefix}lora_B.weight"), &l.b);
        }
    }

    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param)) {
        f(&format!("{prefix}weight"), &mut self.weight);
        if let Some(l) = &mut self.lora {
            f(&format!("{prefix}lora_A.weight"), &mut l.a);
            f(&format!("{prefix}lora_B.weight"), &mut l.b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    fn layer(cfg: &LoraConfig) -> Result<(LoraLinear, Tensor, Tensor)> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (6, 10), &dev)?;
        let x = Tensor::randn(0f32, 1.0, (3, 4, 10), &dev)?;
        let mut l = LoraLinear::new(Param::frozen(w.clone(), ParamGroup::Trunk));
        l.add_lora(cfg, 42)?;
        Ok((l, w, x))
    }

    #[test]
    fn at_init_equals_base_exactly() -> Result<()> {
        let (l, w, x) = layer(&LoraConfig::default())?;
        let y = l.forward(&x, &ForwardCtx::eval())?;
        let base = frozen_linear(&x, &w)?;
        assert_eq!(
            y.flatten_all()?.to_vec1::<f32>()?,
            base.flatten_all()?.to_vec1::<f32>()?
        );
        let a = l
            .lora
            .as_ref()
            .unwrap()
            .a
            .tensor()
            .flatten_all()?
            .to_vec1::<f32>()?;
        let bound = 1.0 / 10f32.sqrt();
        assert!(a.iter().all(|v| v.abs() <= bound) && a.iter().any(|v| v.abs() > bound / 2.0));
        Ok(())
    }

    #[test]
    fn scaling_is_alpha_over_rank_or_sqrt_rank() -> Result<()> {
        for rslora in [false, true] {
            let cfg = LoraConfig {
                rank: 4,
                alpha: 8.0,
                rslora,
                ..Default::default()
            };
            let (mut l, w, x) = layer(&cfg)?;
            let ad = l.lora.as_mut().unwrap();
            let b = Tensor::randn(0f32, 1.0, (6, 4), &Device::Cpu)?;
            ad.b.set_value(b.clone())?;
            let a = ad.a.tensor().clone();
            let s = if rslora { 8.0 / 2.0 } else { 8.0 / 4.0 };
            let expect = (frozen_linear(&x, &w)?
                + (x.broadcast_matmul(&a.t()?)?.broadcast_matmul(&b.t()?)? * s)?)?;
            let y = l.forward(&x, &ForwardCtx::eval())?;
            assert!(max_diff(&y, &expect) < 1e-5);
        }
        Ok(())
    }

    #[test]
    fn merge_matches_unmerged_and_unmerge_restores() -> Result<()> {
        let (mut l, w, x) = layer(&LoraConfig::default())?;
        let b = Tensor::randn(0f32, 1.0, (6, 8), &Device::Cpu)?;
        l.lora.as_mut().unwrap().b.set_value(b)?;
        let ctx = ForwardCtx::eval();
        let unmerged = l.forward(&x, &ctx)?;
        l.merge()?;
        assert!(l.is_merged());
        let merged = l.forward(&x, &ctx)?;
        assert!(
            max_diff(&merged, &unmerged) < 1e-5,
            "{}",
            max_diff(&merged, &unmerged)
        );
        assert!(
            max_diff(l.weight.tensor(), &w) > 1e-3,
            "merge must change W"
        );
        l.unmerge()?;
        assert!(max_diff(l.weight.tensor(), &w) < 1e-5);
        Ok(())
    }

    #[test]
    fn targets_expand_and_reject_unknown() {
        let c = LoraConfig {
            target_modules: vec!["all-linear".into()],
            ..Default::default()
        };
        assert_eq!(c.targets().unwrap().len(), 7);
        // HF names are synonyms
        let c = LoraConfig {
            target_modules: vec![
                "q_proj".into(),
                "wq".into(),
                "down_proj".into(),
                "up_proj".into(),
            ],
            ..Default::default()
        };
        assert_eq!(c.targets().unwrap(), vec!["wq", "w2", "w3"]);
        let c = LoraConfig {
            target_modules: vec!["wq".into(), "qproj".into()],
            ..Default::default()
        };
        assert!(c.targets().unwrap_err().to_string().contains("qproj"));
    }

    #[test]
    fn seven_b_trainable_count_matches_spec() {
        let args = ModelArgs::preset("7b_1t_4").unwrap();
        assert_eq!(
            LoraConfig::default().trainable_count(&args).unwrap(),
            8_388_608
        );
    }
}
