//! `Param`: one named weight of the model, frozen (a plain tensor, no gradient) or trainable (a `Var`),
//! and the parameter groups the trainer and the plugins speak of.

use anyhow::Result;
use candle_core::{Tensor, Var};

/// The part of the model a parameter belongs to; pipelines train groups, not single tensors. In configs
/// it is written `lora`, `value_head`, `heads` or `trunk`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum ParamGroup {
    /// LoRA adapter matrices (`lora_A`, `lora_B`).
    Lora,
    /// The value head.
    ValueHead,
    /// Head blocks (head 0 and the extra heads), the shared final norm and the output projection.
    Heads,
    /// Token embedding and trunk blocks.
    Trunk,
}

impl ParamGroup {
    /// The group's name in configs and manifests.
    pub fn name(self) -> &'static str {
        match self {
            ParamGroup::Lora => "lora",
            ParamGroup::ValueHead => "value_head",
            ParamGroup::Heads => "heads",
            ParamGroup::Trunk => "trunk",
        }
    }
}

/// A model weight. Frozen weights are detached tensors (candle records no gradient path into them);
/// trainable ones are `Var`s — except a trainable weight whose value is still a placeholder
/// ([`crate::model::init::placeholder`]: a launched rank's shard-only init draws it later, or never when
/// its shards do not read it), which stays the placeholder until its value comes ([`Param::replace`],
/// [`Param::set_value`]): a `Var` of it would be a copy of the whole weight.
#[derive(Debug, Clone)]
pub struct Param {
    tensor: Tensor,
    var: Option<Var>,
    group: ParamGroup,
    /// Trainable, with `tensor` a placeholder not yet drawn (`var` is None meanwhile).
    undrawn_trainable: bool,
}

impl Param {
    /// A frozen parameter.
    pub fn frozen(tensor: Tensor, group: ParamGroup) -> Self {
        Param {
            tensor: tensor.detach(),
            var: None,
            group,
            undrawn_trainable: false,
        }
    }

    /// A trainable parameter (the tensor becomes a `Var`).
    pub fn trainable(tensor: Tensor, group: ParamGroup) -> Result<Self> {
        let mut p = Param::frozen(tensor, group);
        p.set_trainable(true)?;
        Ok(p)
    }

    /// The tensor to compute with: the `Var` when trainable, a detached tensor when frozen.
    pub fn tensor(&self) -> &Tensor {
        match &self.var {
            Some(v) => v.as_tensor(),
            None => &self.tensor,
        }
    }

    /// The `Var` of a trainable parameter, to read its gradient and update it (None while its value is
    /// an undrawn placeholder).
    pub fn var(&self) -> Option<&Var> {
        self.var.as_ref()
    }

    /// Whether the optimiser updates this parameter.
    pub fn is_trainable(&self) -> bool {
        self.var.is_some() || self.undrawn_trainable
    }

    /// The parameter's group.
    pub fn group(&self) -> ParamGroup {
        self.group
    }

    /// Number of scalars.
    pub fn numel(&self) -> usize {
        self.tensor().elem_count()
    }

    /// Makes the parameter trainable (a `Var`) or frozen (a detached tensor), keeping its value. A
    /// placeholder stays one (see [`Param`]) until its value comes.
    pub fn set_trainable(&mut self, trainable: bool) -> Result<()> {
        match (trainable, self.var.take()) {
            (true, Some(v)) => self.var = Some(v),
            (true, None) if crate::model::init::is_placeholder(&self.tensor) => {
                self.undrawn_trainable = true
            }
            (true, None) => self.var = Some(Var::from_tensor(&self.tensor)?),
            (false, Some(v)) => self.tensor = v.as_tensor().detach(),
            (false, None) => self.undrawn_trainable = false,
        }
        Ok(())
    }

    /// Replaces the tensor by `value` of any shape (new storage; a trainable parameter gets a new `Var`).
    /// FSDP uses it to put a gathered weight into a unit's copy and to release a sharded model's weights
    /// ([`Param::release`]), the shard-only init to put a drawn weight in; everything else uses
    /// [`Param::set_value`].
    pub fn replace(&mut self, value: Tensor) -> Result<()> {
        if self.is_trainable() {
            self.var = Some(Var::from_tensor(&value.detach())?);
            self.undrawn_trainable = false;
        } else {
            self.tensor = value.detach();
        }
        Ok(())
    }

    /// Drops the weight's storage, keeping dtype, device, group and trainability: the tensor becomes
    /// empty (shape [0]), so computing with a released weight fails on its shape instead of reading
    /// stale values. FSDP keeps the weight in its shards meanwhile.
    pub fn release(&mut self) -> Result<()> {
        let device = self.tensor().device().clone();
        self.release_on(&device)
    }

    /// [`Param::release`], the empty tensor on `device` (FSDP: a policy built in host memory whose
    /// shards live on the GPU reports the GPU as its device).
    pub fn release_on(&mut self, device: &candle_core::Device) -> Result<()> {
        let empty = Tensor::zeros(0, self.tensor().dtype(), device)?;
        self.replace(empty)
    }

    /// [`Param::set_value`] of a tensor read from a file: moved to the parameter's device and dtype
    /// first.
    pub fn set_loaded(&mut self, value: Tensor) -> Result<()> {
        let t = self.tensor();
        let value = value.to_device(t.device())?.to_dtype(t.dtype())?;
        self.set_value(value)
    }

    /// Replaces the value (same shape), keeping trainability.
    pub fn set_value(&mut self, value: Tensor) -> Result<()> {
        anyhow::ensure!(
            value.dims() == self.tensor().dims(),
            "shape {:?} does not match the parameter's {:?}",
            value.dims(),
            self.tensor().dims()
        );
        match &self.var {
            Some(v) => v.set(&value)?,
            None if self.undrawn_trainable => self.replace(value)?,
            None => self.tensor = value.detach(),
        }
        Ok(())
    }
}

/// Walks a module's parameters with their checkpoint names (Meta key names, e.g.
/// `layers.3.attention.wq.weight`, `layers.3.attention.wq.lora_A.weight`, `value_head.out.weight`).
pub trait VisitParams {
    /// Calls `f(name, param)` for every parameter, names prefixed by `prefix`.
    fn visit(&self, prefix: &str, f: &mut dyn FnMut(&str, &Param));
    /// Mutable variant of [`VisitParams::visit`].
    fn visit_mut(&mut self, prefix: &str, f: &mut dyn FnMut(&str, &mut Param));

    /// All parameters as (name, param) pairs, in a stable order.
    fn named_params(&self) -> Vec<(String, Param)> {
        let mut out = Vec::new();
        self.visit("", &mut |n, p| out.push((n.to_string(), p.clone())));
        out
    }
}

/// Sets every parameter of `module` (named under `prefix`) whose group is in `groups` from
/// `tensors[key(name)]`, moved to the parameter's device and dtype; each must be present with the right
/// shape. Used tensors are removed from `tensors`, so the caller can refuse leftovers.
pub fn restore_params(
    module: &mut dyn VisitParams,
    prefix: &str,
    groups: &[ParamGroup],
    tensors: &mut std::collections::HashMap<String, Tensor>,
    key: &dyn Fn(&str) -> String,
) -> Result<()> {
    let mut err = None;
    module.visit_mut(prefix, &mut |name, p| {
        if err.is_some() || !groups.contains(&p.group()) {
            return;
        }
        let k = key(name);
        let r = match tensors.remove(&k) {
            None => Err(anyhow::anyhow!("missing tensor `{k}`")),
            Some(t) => p
                .set_loaded(t)
                .map_err(|e| e.context(format!("tensor `{k}`"))),
        };
        if let Err(e) = r {
            err = Some(e);
        }
    });
    err.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::init::{is_placeholder, placeholder};
    use candle_core::{DType, Device};

    /// A trainable placeholder stays a placeholder (no `Var` copy) and becomes a `Var` of the value it
    /// is given; a drawn weight becomes a `Var` at once.
    #[test]
    fn a_trainable_placeholder_becomes_a_var_only_when_its_value_comes() -> Result<()> {
        let mut p = Param::frozen(placeholder(&[4096, 4096], DType::F32)?, ParamGroup::Trunk);
        p.set_trainable(true)?;
        assert!(p.is_trainable() && p.var().is_none() && is_placeholder(p.tensor()));
        let value = Tensor::ones((4096, 4096), DType::F32, &Device::Cpu)?;
        p.set_value(value.clone())?;
        let var = p.var().expect("a Var once the value came");
        assert_eq!(
            var.as_tensor().sum_all()?.to_scalar::<f32>()?,
            4096.0 * 4096.0
        );
        // frozen again, and a placeholder set trainable then frozen stays frozen
        p.set_trainable(false)?;
        assert!(!p.is_trainable());
        let mut q = Param::frozen(placeholder(&[8], DType::F32)?, ParamGroup::Heads);
        q.set_trainable(true)?;
        q.set_trainable(false)?;
        assert!(!q.is_trainable() && is_placeholder(q.tensor()));
        q.set_trainable(true)?;
        q.replace(Tensor::zeros(0, DType::F32, &Device::Cpu)?)?; // FSDP's release
        assert!(q.is_trainable() && q.var().is_some_and(|v| v.elem_count() == 0));
        let mut r = Param::frozen(value, ParamGroup::Trunk);
        r.set_trainable(true)?;
        assert!(r.var().is_some());
        Ok(())
    }
}
