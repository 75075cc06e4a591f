//! Focal MTP loss: easy tokens (high probability p = e^{−CE}) count less.
//! Per token ℓ = (1 − p)^γ · CE, averaged per head over valid tokens, then over heads. The plugin returns
//! the TRUE derivative ∂ℓ/∂CE = (1 − p)^γ + γ·CE·p·(1 − p)^{γ−1}, not just the weight.
use wmtp_sdk::*;

#[derive(Default)]
pub struct Focal {
    gamma: f64,
}

impl Pipeline for Focal {
    fn manifest() -> Manifest {
        manifest(
            "focal",
            "0.1.0",
            "focal MTP loss: (1 − p)^γ · CE per token",
            &[],
            &[ParamGroup::Lora, ParamGroup::Heads],
            &[(
                "gamma",
                "2.0",
                "focusing exponent γ ≥ 0 (0 = plain cross-entropy)",
            )],
        )
    }

    fn configure(&mut self, cfg: &Config) -> Result<(), String> {
        self.gamma = cfg.f64_in("gamma", 0.0, 10.0)?;
        Ok(())
    }

    fn weigh(&mut self, batch: &Batch, _train: bool) -> Result<Coefficients, String> {
        let v = BatchView::new(batch)?;
        let g = self.gamma;
        let focal = |ce: f64| {
            let p = (-ce).exp();
            let slope = if g == 0.0 {
                0.0
            } else {
                g * ce * p * (1.0 - p).powf(g - 1.0)
            };
            ((1.0 - p).powf(g) * ce, (1.0 - p).powf(g) + slope) // (loss term, derivative)
        };
        // weighted_ce's coefficients are w·M/(n_k·H); with w = ∂ℓ/∂CE they are the derivatives of the mean
        let (ce, _) = weighted_ce(&v, |b, t, k| focal(v.ce(b, t, k) as f64).1);
        let (per_token, _) = weighted_ce(&v, |_, _, _| 1.0);
        let loss: f64 = per_token
            .iter()
            .zip(&batch.ce)
            .map(|(&c, &x)| c as f64 * focal(x as f64).0)
            .sum();
        Ok(Coefficients {
            ce,
            values: None,
            loss,
            metrics: vec![("focal_loss".into(), loss)],
        })
    }
}

export_pipeline!(Focal);
