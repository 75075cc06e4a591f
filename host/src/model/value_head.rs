//! The value head (design.md §2): one value per position from norm(h_trunk).
//! `linear`: D→1; `sigmoid`: σ(linear); `mlp`: D→D/4→D/8→1 as Linear–GELU(erf)–Dropout–Linear–GELU–
//! Dropout–Linear. The last Linear's weight starts at zero and its bias at `bias_init`; earlier layers use
//! PyTorch's default init (uniform ±1/√in for weight and bias).

use super::forward_ctx::ForwardCtx;
use super::frozen_linear::{frozen_linear, trainable_linear};
use super::param::{Param, ParamGroup, VisitParams};
use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Value-head architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueHeadKind {
    /// D→1.
    Linear,
    /// σ(D→1), values in (0, 1).
    Sigmoid,
    /// D→D/4→D/8→1 with GELU and dropout.
    Mlp,
}

/// Value-head settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValueHeadConfig {
    /// Architecture.
    #[serde(rename = "type")]
    pub kind: ValueHeadKind,
    /// Dropout between MLP layers (mlp only).
    #[serde(default)]
    pub dropout: f32,
    /// Initial bias of the last layer (the initial value of every position).
    #[serde(default)]
    pub bias_init: f64,
}

impl Default for ValueHeadConfig {
    fn default() -> Self {
        ValueHeadConfig {
            kind: ValueHeadKind::Linear,
            dropout: 0.0,
            bias_init: 0.0,
        }
    }
}

/// One affine layer of the value head.
#[derive(Debug, Clone)]
struct Affine {
    weight: Param,
    bias: Param,
}

/// The value head; its parameters are named `value_head.{i}.weight|bias`.
#[derive(Debug, Clone)]
pub struct ValueHead {
    /// Settings it was built with.
    pub config: ValueHeadConfig,
    layers: Vec<Affine>,
    /// Fused kernels or plain ops (its dropout masks; set beside the policy's).
    pub kernels: crate::kernels::Kernels,
}

impl ValueHead {
    /// A freshly initialised head for model width `dim` (trainable), seeded.
    pub fn new(cfg: &ValueHeadConfig, dim: usize, seed: u64, dev: &Device) -> Result<Self> {
        if !(0.0..1.0).contains(&cfg.dropout) {
            bail!("value head `dropout` must be in [0, 1)");
        }
        let widths = match cfg.kind {
            ValueHeadKind::Mlp => {
                if dim < 8 {
                    bail!("an mlp value head needs dim ≥ 8 (D→D/4→D/8→1), got {dim}");
                }
                vec![dim, dim / 4, dim / 8, 1]
            }
            _ => vec![dim, 1],
        };
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = widths.len() - 1;
        let mut layers = Vec::with_capacity(n);
        for (i, w) in widths.windows(2).enumerate() {
            let (fan_in, fan_out) = (w[0], w[1]);
            let (weight, bias) = if i == n - 1 {
                (
                    vec![0f32; fan_in * fan_out],
                    vec![cfg.bias_init as f32; fan_out],
                )
            } else {
                let b = 1.0 / (fan_in as f64).sqrt();
                let mut u = |k: usize| {
                    (0..k)
                        .map(|_| rng.random_range(-b..b) as f32)
                        .collect::<Vec<_>>()
                };
                (u(fan_in * fan_out), u(fan_out))
            };
            layers.push(Affine {
                weight: Param::trainable(
                    Tensor::from_vec(weight, (fan_out, fan_in), dev)?,
                    ParamGroup::ValueHead,
                )?,
                bias: Param::trainable(
                    Tensor::from_vec(bias, fan_out, dev)?,
                    ParamGroup::ValueHead,
                )?,
            });
        }
        Ok(ValueHead {
            config: cfg.clone(),
            layers,
            kernels: Default::default(),
        })
    }

    /// Values [B, T] (f32) from norm(h_trunk) [B, T, D].
    pub fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let mut h = x.to_dtype(DType::F32)?;
        let last = self.layers.len() - 1;
        for (i, l) in self.layers.iter().enumerate() {
            h = if l.weight.is_trainable() {
                trainable_linear(&h, l.weight.tensor())?
            } else {
                frozen_linear(&h, l.weight.tensor())?
            };
            h = h.broadcast_add(l.bias.tensor())?;
            if i < last {
                h = ctx.dropout(self.kernels, &h.gelu_erf()?, self.config.dropout)?;
            }
        }
        if self.config.kind == ValueHeadKind::Sigmoid {
            h = candle_nn::ops::sigmoid(&h)?;
        }
        Ok(h.squeeze(candle_core::D::Minus1)?)
    }
}

impl VisitParams for ValueHead {
    fn visit(&self, p: &str, f: &mut dyn FnMut(&str, &Param)) {
        for (i, l) in self.layers.iter().enumerate() {
            f(&format!("{p}{i}.weight"), &l.weight);
            f(&format!("{p}{i}.bias"), &l.bias);
        }
    }
    fn visit_mut(&mut self, p: &str, f: &mut dyn FnMut(&str, &mut Param)) {
        for (i, l) in self.layers.iter_mut().enumerate() {
            f(&format!("{p}{i}.weight"), &mut l.weight);
            f(&format!("{p}{i}.bias"), &mut l.bias);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_at_bias_init_and_shapes() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 5, 32), &dev)?;
        for kind in [
            ValueHeadKind::Linear,
            ValueHeadKind::Sigmoid,
            ValueHeadKind::Mlp,
        ] {
            let cfg = ValueHeadConfig {
                kind,
                dropout: 0.1,
                bias_init: 0.5,
            };
            let vh = ValueHead::new(&cfg, 32, 1, &dev)?;
            let v = vh.forward(&x, &ForwardCtx::eval())?;
            assert_eq!(v.dims(), &[2, 5]);
            let want = if kind == ValueHeadKind::Sigmoid {
                1.0 / (1.0 + (-0.5f32).exp())
            } else {
                0.5
            };
            for row in v.to_vec2::<f32>()? {
                assert!(
                    row.iter().all(|a| (a - want).abs() < 1e-6),
                    "{kind:?}: {row:?}"
                );
            }
        }
        let mlp = ValueHead::new(
            &ValueHeadConfig {
                kind: ValueHeadKind::Mlp,
                ..Default::default()
            },
            32,
            1,
            &dev,
        )?;
        let shapes: Vec<_> = mlp
            .named_params()
            .into_iter()
            .map(|(n, p)| (n, p.tensor().dims().to_vec()))
            .collect();
        assert_eq!(shapes[0], ("0.weight".to_string(), vec![8, 32]));
        assert_eq!(shapes[4], ("2.weight".to_string(), vec![1, 4]));
        Ok(())
    }

    #[test]
    fn gradient_reaches_last_layer() -> Result<()> {
        let dev = Device::Cpu;
        let vh = ValueHead::new(&ValueHeadConfig::default(), 16, 1, &dev)?;
        let x = Tensor::randn(0f32, 1.0, (1, 3, 16), &dev)?;
        let g = vh.forward(&x, &ForwardCtx::eval())?.sum_all()?.backward()?;
        let n = vh
            .named_params()
            .into_iter()
            .filter(|(_, p)| g.get(p.tensor()).is_some())
            .count();
        assert_eq!(n, 2);
        Ok(())
    }
}
