//! Focal MTP loss: easy tokens (high probability p = e^{−CE}) count less. Per token
//! ℓ = (1 − p)^γ · CE, averaged per head over valid tokens, then over heads; the coefficients are the
//! TRUE derivative ∂ℓ/∂CE = (1 − p)^γ + γ·CE·p·(1 − p)^{γ−1}, not just the weight.
use wmtp_sdk::*;

settings! {
    pub struct FocalSettings {
        /// focusing exponent γ ≥ 0 (0 = plain cross-entropy)
        gamma: f64 = 2.0,
    }
}

#[derive(Default)]
pub struct Focal(FocalSettings);

impl Pipeline for Focal {
    type Settings = FocalSettings;
    fn manifest() -> Manifest {
        ManifestBuilder::new("focal", "0.1.0")
            .describe("focal MTP loss: (1 − p)^γ · CE per token")
            .build()
    }
    fn configure(&mut self, s: FocalSettings) -> Result<(), String> {
        check_range("gamma", s.gamma, 0.0, 10.0)?;
        self.0 = s;
        Ok(())
    }
    fn weigh(&mut self, batch: &Batch, _train: bool) -> Result<Coefficients, String> {
        let g = self.0.gamma;
        let (ce, loss) = per_token_loss(&BatchView::new(batch)?, |ce| {
            let (p, q) = ((-ce).exp(), 1.0 - (-ce).exp()); // q = 1 − p
            let slope = g * ce * p * q.max(f64::MIN_POSITIVE).powf(g - 1.0); // 0 when γ = 0
            (q.powf(g) * ce, q.powf(g) + slope)
        });
        Ok(Coefficients::of_ce(ce, loss).metric("focal_loss", loss))
    }
}

export_pipeline!(Focal);
