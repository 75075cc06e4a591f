//! Baseline pipeline (design.md §5.1): every valid token weighs 1, and head k's mean CE weighs λ_k
//! (`head_weights`, uniform by default):
//! L = Σ_{k: n_k>0} λ_k·L_k / Σ_{k: n_k>0} λ_k with L_k = Σ_{b,t} CE·M / n_k,
//! so ∂L/∂CE[b,t,k] = λ_k·M / (n_k·Σλ) (with uniform λ: M / (n_k·H_valid)).

use wmtp_sdk::*;

settings! {
    /// The `[plugin]` table of baseline.
    pub struct BaselineSettings {
        /// per-head loss weights λ, head 0 first ([] = uniform; or { decay = d } for λ_k = d^k)
        head_weights: HeadWeights = HeadWeights::default(),
    }
}

/// The baseline pipeline (stateless).
#[derive(Default)]
pub struct Baseline {
    s: BaselineSettings,
}

impl Pipeline for Baseline {
    type Settings = BaselineSettings;

    fn manifest() -> Manifest {
        ManifestBuilder::new("baseline", env!("CARGO_PKG_VERSION"))
            .describe("plain MTP loss: (λ-weighted) mean per-head cross-entropy over valid tokens")
            .trains(&[ParamGroup::Lora, ParamGroup::Heads, ParamGroup::Trunk])
            .build()
    }

    fn configure(&mut self, s: BaselineSettings) -> Result<(), String> {
        s.head_weights.check()?;
        self.s = s;
        Ok(())
    }

    fn weigh(&mut self, batch: &Batch, _train: bool) -> Result<Coefficients, String> {
        let lambda = self.s.head_weights.resolve(batch.heads as usize)?;
        let v = BatchView::new(batch)?.with_head_weights(&lambda)?;
        let (ce, loss) = weighted_ce(&v, |_, _, _| 1.0);
        let metrics = v
            .head_mean_ce()
            .into_iter()
            .enumerate()
            .filter_map(|(k, m)| Some((format!("ce_h{k}"), m?)))
            .collect();
        Ok(Coefficients {
            ce,
            values: None,
            loss,
            metrics,
        })
    }
}

export_pipeline!(Baseline);
