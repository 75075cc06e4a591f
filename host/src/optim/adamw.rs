//! AdamW (β 0.9/0.95 by default, decoupled weight decay on ≥ 2-D tensors only) with per-group learning
//! rates and decay and f32 masters of narrow (bf16/f16) parameters; moments are f32, and the state is
//! saved in checkpoints so a resumed run continues exactly. On CUDA one multi-tensor kernel updates a
//! module.

use super::{GroupSettings, Optimizer, Schedule};
use crate::model::grads::Grads;
use crate::model::{Param, ParamGroup, VisitParams};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// AdamW hyper-parameters shared by all groups.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdamWConfig {
    /// β₁.
    #[serde(default = "b1")]
    pub beta1: f64,
    /// β₂.
    #[serde(default = "b2")]
    pub beta2: f64,
    /// ε.
    #[serde(default = "eps")]
    pub eps: f64,
}
fn b1() -> f64 {
    0.9
}
fn b2() -> f64 {
    0.95
}
fn eps() -> f64 {
    1e-8
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: b1(),
            beta2: b2(),
            eps: eps(),
        }
    }
}

/// AdamW over named parameters.
#[derive(Debug)]
pub struct AdamW {
    cfg: AdamWConfig,
    groups: HashMap<ParamGroup, GroupSettings>,
    schedule: Schedule,
    /// Optimizer steps taken.
    pub step: u64,
    m: BTreeMap<String, Tensor>,
    v: BTreeMap<String, Tensor>,
    /// Whether the update may take the fused multi-tensor kernel (`runtime.fused_kernels`).
    kernels: crate::kernels::Kernels,
    /// f32 master copies of trainable parameters whose compute dtype is narrower (bf16/f16): the update
    /// is applied to the master and the parameter is set to its rounding, so small updates accumulate
    /// instead of vanishing in bf16.
    master: BTreeMap<String, Tensor>,
}

impl AdamW {
    /// A fresh optimiser.
    pub fn new(
        cfg: AdamWConfig,
        groups: HashMap<ParamGroup, GroupSettings>,
        schedule: Schedule,
    ) -> Self {
        AdamW {
            cfg,
            groups,
            schedule,
            step: 0,
            m: BTreeMap::new(),
            v: BTreeMap::new(),
            master: BTreeMap::new(),
            kernels: Default::default(),
        }
    }

    /// The same optimiser with kernels `k` (`Plain`: tensor-by-tensor updates even on CUDA).
    pub fn with_kernels(mut self, k: crate::kernels::Kernels) -> Self {
        self.kernels = k;
        self
    }

    /// Updates one parameter from its gradient (no-op without one):
    /// m ← β₁m + (1−β₁)g; v ← β₂v + (1−β₂)g²; p ← p − lr·(m̂/(√v̂+ε) + wd·p) with bias-corrected m̂, v̂.
    /// Call [`Optimizer::finish_step`] once every parameter is updated.
    pub fn update(&mut self, name: &str, p: &mut Param, grads: &Grads) -> Result<()> {
        self.update_scaled(name, p, grads, 1.0)
    }

    /// [`AdamW::update`] with the gradient multiplied by `gscale` first.
    fn update_scaled(
        &mut self,
        name: &str,
        p: &mut Param,
        grads: &Grads,
        gscale: f64,
    ) -> Result<()> {
        let Some(g) = grads.by_name.get(name) else {
            return Ok(());
        };
        let Some(var) = p.var() else {
            bail!("parameter {name} has a gradient but is frozen")
        };
        let t = (self.step + 1) as i32;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        let gs = *self
            .groups
            .get(&p.group())
            .with_context(|| format!("no optimiser group for {name}"))?;
        let lr = gs.lr * self.schedule.factor(self.step);
        let g = g.to_dtype(DType::F32)?;
        let g = if gscale == 1.0 { g } else { (g * gscale)? };
        let m = match self.m.remove(name) {
            Some(m) => ((m * b1)? + (&g * (1.0 - b1))?)?,
            None => (&g * (1.0 - b1))?,
        };
        let v = match self.v.remove(name) {
            Some(v) => ((v * b2)? + (g.sqr()? * (1.0 - b2))?)?,
            None => (g.sqr()? * (1.0 - b2))?,
        };
        let narrow = var.dtype() != DType::F32;
        let w = match self.master.remove(name) {
            Some(w) if narrow => w,
            _ => var.as_tensor().to_dtype(DType::F32)?,
        };
        let update = ((&m / c1)? / ((&v / c2)?.sqrt()? + self.cfg.eps)?)?;
        let decay = if w.rank() >= 2 { gs.weight_decay } else { 0.0 };
        // detached: `w` may be the Var itself, and the master copy kept below must not hold a graph
        // back to it (each step's would chain to the last one's)
        let new = ((&w * (1.0 - lr * decay))? - (update * lr)?)?.detach();
        var.set(&new.to_dtype(var.dtype())?)?;
        if narrow {
            self.master.insert(name.to_string(), new);
        }
        self.m.insert(name.to_string(), m.detach());
        self.v.insert(name.to_string(), v.detach());
        Ok(())
    }

    /// Whether the fused update (one multi-tensor kernel) can run for `module`: every trainable parameter on one CUDA
    /// device (f32 or bf16) with the fused kernels on.
    pub fn can_fuse(&self, module: &dyn VisitParams) -> bool {
        let mut ok = true;
        let mut any = false;
        module.visit("", &mut |_, p| {
            if p.is_trainable() {
                any = true;
                let t = p.tensor();
                ok &= self.kernels.fuse(t.device(), t.dtype());
            }
        });
        ok && any
    }

    /// [`Optimizer::update_module`] as one multi-tensor kernel launch (CUDA), every gradient multiplied by
    /// `gscale` (the clipping factor) on the way. Moments and masters are created on first use, like the
    /// per-tensor path, and hold the same values.
    #[cfg(feature = "cuda")]
    fn update_module_fused(
        &mut self,
        module: &mut dyn VisitParams,
        prefix: &str,
        grads: &Grads,
        gscale: f64,
    ) -> Result<()> {
        use crate::kernels::adamw::{adamw_step, AdamSlot, AdamStep};
        let t = (self.step + 1) as i32;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let k = AdamStep {
            b1: b1 as f32,
            b2: b2 as f32,
            eps: self.cfg.eps as f32,
            c1: (1.0 - b1.powi(t)) as f32,
            c2: (1.0 - b2.powi(t)) as f32,
            gscale: gscale as f32,
        };
        // (name, parameter tensor, lr, wd) of every trainable parameter with a gradient
        let mut items: Vec<(String, Tensor, f32, f32)> = Vec::new();
        let mut err = None;
        module.visit(prefix, &mut |name, p| {
            if !p.is_trainable() || !grads.by_name.contains_key(name) {
                return;
            }
            match self.groups.get(&p.group()) {
                Some(gs) => {
                    let lr = gs.lr * self.schedule.factor(self.step);
                    let wd = if p.tensor().rank() >= 2 {
                        gs.weight_decay
                    } else {
                        0.0
                    };
                    items.push((name.to_string(), p.tensor().clone(), lr as f32, wd as f32));
                }
                None => err = Some(anyhow::anyhow!("no optimiser group for {name}")),
            }
        });
        if let Some(e) = err {
            return Err(e);
        }
        for (name, w, _, _) in &items {
            let zeros = || Tensor::zeros(w.shape(), DType::F32, w.device());
            if !self.m.contains_key(name) {
                self.m.insert(name.clone(), zeros()?);
                self.v.insert(name.clone(), zeros()?);
            }
            if w.dtype() != DType::F32 && !self.master.contains_key(name) {
                self.master.insert(name.clone(), w.to_dtype(DType::F32)?);
            }
        }
        let slots: Vec<AdamSlot> = items
            .iter()
            .map(|(name, w, lr, wd)| {
                let narrow = w.dtype() != DType::F32;
                AdamSlot {
                    master: if narrow { &self.master[name] } else { w },
                    copy: narrow.then_some(w),
                    grad: &grads.by_name[name],
                    m: &self.m[name],
                    v: &self.v[name],
                    lr: *lr,
                    wd: *wd,
                }
            })
            .collect();
        // SAFETY (in-place update): the parameter, master, moment and gradient buffers belong to the
        // model and the optimiser; no computation that reads them is in flight on another stream.
        adamw_step(&slots, k)?;
        Ok(())
    }
}

impl Optimizer for AdamW {
    fn steps_taken(&self) -> u64 {
        self.step
    }

    /// Peak-relative lr of the next step, times the group's peak lr.
    fn lr(&self, group: ParamGroup) -> f64 {
        self.groups.get(&group).map_or(0.0, |g| g.lr) * self.schedule.factor(self.step)
    }

    fn fuses(&self, module: &dyn VisitParams) -> bool {
        self.can_fuse(module)
    }

    /// Updates every parameter of `module` (named under `prefix`) that has a gradient: the multi-tensor
    /// kernel where [`AdamW::can_fuse`] says so (CUDA builds), else tensor by tensor.
    fn update_module(
        &mut self,
        module: &mut dyn VisitParams,
        prefix: &str,
        grads: &Grads,
        gscale: f64,
    ) -> Result<()> {
        #[cfg(feature = "cuda")]
        if self.can_fuse(module) {
            return self.update_module_fused(module, prefix, grads, gscale);
        }
        let mut err = None;
        module.visit_mut(prefix, &mut |name, p| {
            if err.is_none() {
                if let Err(e) = self.update_scaled(name, p, grads, gscale) {
                    err = Some(e);
                }
            }
        });
        err.map_or(Ok(()), Err)
    }

    /// Ends an optimizer step (advances the schedule and bias correction).
    fn finish_step(&mut self) {
        self.step += 1;
    }

    /// The moments and f32 masters as named tensors (`m.<param>`, `v.<param>`, `master.<param>`) and the
    /// step, for checkpoints.
    fn state(&self) -> (HashMap<String, Tensor>, u64) {
        let mut out = HashMap::new();
        for (k, t) in &self.master {
            out.insert(format!("master.{k}"), t.clone());
        }
        for (k, t) in &self.m {
            out.insert(format!("m.{k}"), t.clone());
        }
        for (k, t) in &self.v {
            out.insert(format!("v.{k}"), t.clone());
        }
        (out, self.step)
    }

    /// Restores [`AdamW::state`].
    fn load_state(&mut self, tensors: HashMap<String, Tensor>, step: u64) -> Result<()> {
        self.m.clear();
        self.v.clear();
        self.master.clear();
        for (k, t) in tensors {
            if let Some(n) = k.strip_prefix("master.") {
                self.master.insert(n.to_string(), t.to_dtype(DType::F32)?);
            } else if let Some(n) = k.strip_prefix("m.") {
                self.m.insert(n.to_string(), t);
            } else if let Some(n) = k.strip_prefix("v.") {
                self.v.insert(n.to_string(), t);
            } else {
                bail!("unexpected optimiser state tensor `{k}`");
            }
        }
        self.step = step;
        Ok(())
    }

    fn sharded_slots(&self) -> &'static [&'static str] {
        &["m", "v"]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn adamw_matches_hand_computation_and_skips_decay_on_vectors() -> Result<()> {
        let dev = Device::Cpu;
        let mut w = Param::trainable(Tensor::new(&[[1.0f32, -2.0]], &dev)?, ParamGroup::Trunk)?;
        let mut b = Param::trainable(Tensor::new(&[0.5f32], &dev)?, ParamGroup::Trunk)?;
        let groups = HashMap::from([(
            ParamGroup::Trunk,
            GroupSettings {
                lr: 0.1,
                weight_decay: 0.5,
            },
        )]);
        let sched = Schedule {
            total_steps: 10,
            warmup_ratio: 0.0,
            min_lr_ratio: 1.0,
        };
        let mut opt = AdamW::new(AdamWConfig::default(), groups, sched);
        let mut grads = Grads::default();
        grads.add("w", &Tensor::new(&[[0.2f32, -0.4]], &dev)?)?;
        grads.add("b", &Tensor::new(&[1.0f32], &dev)?)?;
        opt.update("w", &mut w, &grads)?;
        opt.update("b", &mut b, &grads)?;
        opt.finish_step();
        // first step: m̂ = g, v̂ = g², update = g/(|g|+ε) ≈ sign(g)
        let wv = w.tensor().to_vec2::<f32>()?;
        assert!(
            (wv[0][0] - (1.0 * (1.0 - 0.05) - 0.1)).abs() < 1e-5,
            "{wv:?}"
        );
        assert!(
            (wv[0][1] - (-2.0 * (1.0 - 0.05) + 0.1)).abs() < 1e-5,
            "{wv:?}"
        );
        assert!(
            (b.tensor().to_vec1::<f32>()?[0] - 0.4).abs() < 1e-5,
            "no decay on 1-D"
        );
        Ok(())
    }

    #[test]
    fn bf16_parameters_are_updated_through_an_f32_master() -> Result<()> {
        let dev = Device::Cpu;
        // 1.0 in bf16 cannot move by 1e-4 (its spacing is 2^-7): only an f32 master accumulates such steps
        let mut w = Param::trainable(
            Tensor::new(&[1.0f32], &dev)?.to_dtype(DType::BF16)?,
            ParamGroup::Trunk,
        )?;
        let groups = HashMap::from([(
            ParamGroup::Trunk,
            GroupSettings {
                lr: 1e-4,
                weight_decay: 0.0,
            },
        )]);
        let sched = Schedule {
            total_steps: 100,
            warmup_ratio: 0.0,
            min_lr_ratio: 1.0,
        };
        let mut opt = AdamW::new(AdamWConfig::default(), groups, sched);
        for _ in 0..100 {
            let mut grads = Grads::default();
            grads.add("w", &Tensor::new(&[1.0f32], &dev)?)?;
            opt.update("w", &mut w, &grads)?;
            opt.finish_step();
        }
        // 100 steps of ≈1e-4 each: the master is ≈0.99, the bf16 weight its rounding
        let (state, _) = opt.state();
        let master = state["master.w"].to_vec1::<f32>()?[0];
        assert!((master - 0.99).abs() < 1e-3, "master {master}");
        let wv = w.tensor().to_dtype(DType::F32)?.to_vec1::<f32>()?[0];
        assert!((wv - 0.99).abs() < 4e-3, "bf16 weight {wv}");
        Ok(())
    }
}
