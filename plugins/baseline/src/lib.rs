//! Baseline pipeline (SPEC §5.1): every valid token weighs 1,
//! L = mean over heads k with n_k > 0 of Σ_{b,t} CE·M / n_k, so ∂L/∂CE[b,t,k] = M / (n_k · H_valid).
//! Option `normalize = "weights"` is accepted for symmetry with other pipelines (with w ≡ 1 it is the same).

use wmtp_sdk::*;

/// The baseline pipeline (stateless).
#[derive(Default)]
pub struct Baseline;

impl Pipeline for Baseline {
    fn manifest() -> Manifest {
        manifest(
            "baseline",
            env!("CARGO_PKG_VERSION"),
            "plain MTP loss: mean per-head cross-entropy over valid tokens",
            &[],
            &[ParamGroup::Lora, ParamGroup::Heads, ParamGroup::Trunk],
            &[],
        )
    }

    fn configure(&mut self, _cfg: &Config) -> Result<(), String> {
        Ok(())
    }

    fn weigh(&mut self, batch: &Batch, _train: bool) -> Result<Coefficients, String> {
        let v = BatchView::new(batch)?;
        let (ce, loss) = weighted_ce(&v, |_, _, _| 1.0);
        let mut metrics = Vec::with_capacity(v.h);
        for k in 0..v.h {
            let n = v.valid_count(k);
            let s: f64 = (0..v.b)
                .flat_map(|b| (0..v.t).map(move |t| (b, t)))
                .filter(|&(b, t)| v.valid(b, t, k))
                .map(|(b, t)| v.ce(b, t, k) as f64)
                .sum();
            if n > 0 {
                metrics.push((format!("ce_h{k}"), s / n as f64));
            }
        }
        Ok(Coefficients {
            ce,
            values: None,
            loss,
            metrics,
        })
    }
}

export_pipeline!(Baseline);
