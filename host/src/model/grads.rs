//! Gradients accumulated by parameter name across units, micro-batches and accumulation steps.

use crate::model::{Param, VisitParams};
use anyhow::Result;
use candle_core::Tensor;
use std::collections::BTreeMap;

/// Summed gradients of trainable parameters, by checkpoint name (f32).
#[derive(Debug, Default, Clone)]
pub struct Grads {
    /// name → gradient, same shape as the parameter.
    pub by_name: BTreeMap<String, Tensor>,
}

impl Grads {
    /// Adds the gradients that `store` holds for the trainable parameters of `module` (named under
    /// `prefix`).
    pub fn absorb(
        &mut self,
        module: &dyn VisitParams,
        prefix: &str,
        store: &candle_core::backprop::GradStore,
    ) -> Result<()> {
        let mut found: Vec<(String, Tensor)> = Vec::new();
        module.visit(prefix, &mut |name, p: &Param| {
            if p.is_trainable() {
                if let Some(g) = store.get(p.tensor()) {
                    found.push((name.to_string(), g.clone()));
                }
            }
        });
        for (name, g) in found {
            self.add(&name, &g)?;
        }
        Ok(())
    }

    /// Adds `g` (converted to f32, detached) to the gradient of `name`.
    ///
    /// Detached, because a gradient that candle's autograd returns for a leaf (a `Var`) can still carry
    /// the graph it was computed through (e.g. the value head's dL/dh refers to the step's forward
    /// tensors); kept in the sum, and from there in AdamW's moments, it would keep every step's graph
    /// alive: +145 MB of host memory per step for verifiable's joint value head (issue 22).
    pub fn add(&mut self, name: &str, g: &Tensor) -> Result<()> {
        let g = g.to_dtype(candle_core::DType::F32)?.detach();
        let sum = match self.by_name.remove(name) {
            Some(prev) => (prev + g)?,
            None => g,
        };
        self.by_name.insert(name.to_string(), sum);
        Ok(())
    }

    /// √(Σ‖g‖²) over all gradients.
    pub fn global_norm(&self) -> Result<f64> {
        let mut total = 0f64;
        for g in self.by_name.values() {
            total += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        }
        Ok(total.sqrt())
    }

    /// Multiplies every gradient by `s`.
    pub fn scale(&mut self, s: f64) -> Result<()> {
        for g in self.by_name.values_mut() {
            *g = (&*g * s)?;
        }
        Ok(())
    }

    /// Forgets all gradients.
    pub fn clear(&mut self) {
        self.by_name.clear();
    }
}
