//! Guards on the weights: a step whose gradient norm is not finite is skipped (the update is not
//! applied, as mixed-precision loss scaling does with an overflowed step) with a warning naming the
//! pipeline and the step; `training.max_skipped_steps` consecutive skips stop the run with an error; and
//! no checkpoint is ever written with a non-finite trainable parameter.

use crate::model::VisitParams;
use anyhow::{bail, Result};
use candle_core::DType;

/// Counts skipped steps and decides when skipping has gone on too long.
#[derive(Debug, Clone)]
pub struct SkipGuard {
    /// Most consecutive skipped steps before the run stops.
    pub max_consecutive: u64,
    /// Skipped steps in a row, up to now.
    pub consecutive: u64,
    /// Skipped steps in this process, in all.
    pub total: u64,
}

impl SkipGuard {
    /// A guard that stops after `max_consecutive` skipped steps in a row.
    pub fn new(max_consecutive: u64) -> Self {
        SkipGuard {
            max_consecutive,
            consecutive: 0,
            total: 0,
        }
    }

    /// Records whether step `step` (1-based, as reported) was skipped with gradient norm `norm`; warns
    /// on a skip and fails once `max_consecutive` steps in a row were skipped.
    pub fn record(&mut self, skipped: bool, step: u64, norm: f64, pipeline: &str) -> Result<()> {
        if !skipped {
            self.consecutive = 0;
            return Ok(());
        }
        self.consecutive += 1;
        self.total += 1;
        tracing::warn!(
            "step {step}: the gradient norm is {norm} with {pipeline}: step skipped, weights unchanged ({} in a row, the run stops at {})",
            self.consecutive,
            self.max_consecutive
        );
        if self.consecutive >= self.max_consecutive {
            bail!(
                "{pipeline}: {} consecutive steps (up to step {step}) had a non-finite gradient norm ({norm}); the run stops with the weights of the last good step (raise training.max_skipped_steps to tolerate more)",
                self.consecutive
            );
        }
        Ok(())
    }
}

/// Number of NaN or infinite values in `t`.
pub fn non_finite_count(t: &candle_core::Tensor) -> Result<usize> {
    let t = t.to_dtype(DType::F32)?;
    // x − x is 0 for every finite x and NaN for ±inf and NaN (the point of the "equal operands")
    #[allow(clippy::eq_op)]
    let bad = (&t - &t)?.ne(0f32)?.to_dtype(DType::F32)?.sum_all()?;
    Ok(bad.to_scalar::<f32>()? as usize)
}

/// Fails, naming the first offending parameter, when a trainable parameter of `module` holds a NaN or
/// an infinity. `what` names the module in the error.
pub fn check_finite(module: &dyn VisitParams, prefix: &str, what: &str) -> Result<()> {
    for (name, p) in module.named_params() {
        if !p.is_trainable() {
            continue; // frozen weights never change during training
        }
        let n = non_finite_count(p.tensor())?;
        if n > 0 {
            bail!(
                "{what}: parameter {prefix}{name} has {n} non-finite values (of {}); not writing a checkpoint with them",
                p.numel()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn counts_nan_and_infinities_but_not_large_finite_values() -> Result<()> {
        let t = Tensor::new(
            &[1.0f32, f32::NAN, f32::INFINITY, -f32::INFINITY, f32::MAX],
            &Device::Cpu,
        )?;
        assert_eq!(non_finite_count(&t)?, 3);
        Ok(())
    }

    #[test]
    fn consecutive_skips_stop_the_run_and_a_good_step_resets_the_count() {
        let mut g = SkipGuard::new(3);
        g.record(true, 1, f64::INFINITY, "plugin `x`").unwrap();
        g.record(true, 2, f64::NAN, "plugin `x`").unwrap();
        g.record(false, 3, 1.0, "plugin `x`").unwrap();
        g.record(true, 4, f64::NAN, "plugin `x`").unwrap();
        g.record(true, 5, f64::NAN, "plugin `x`").unwrap();
        let e = g.record(true, 6, f64::NAN, "plugin `x`").unwrap_err();
        assert!(
            e.to_string().contains("3 consecutive steps (up to step 6)"),
            "{e}"
        );
        assert_eq!(g.total, 5);
    }
}
