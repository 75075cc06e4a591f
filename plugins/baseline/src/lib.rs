//! Baseline pipeline (design.md §5.1): every valid token weighs 1,
//! L = mean over heads k with n_k > 0 of Σ_{b,t} CE·M / n_k, so ∂L/∂CE[b,t,k] = M / (n_k · H_valid).

use wmtp_sdk::*;

/// The baseline pipeline (stateless).
#[derive(Default)]
pub struct Baseline;

impl Pipeline for Baseline {
    type Settings = NoSettings;

    fn manifest() -> Manifest {
        ManifestBuilder::new("baseline", env!("CARGO_PKG_VERSION"))
            .describe("plain MTP loss: mean per-head cross-entropy over valid tokens")
            .trains(&[ParamGroup::Lora, ParamGroup::Heads, ParamGroup::Trunk])
            .build()
    }

    fn weigh(&mut self, batch: &Batch, _train: bool) -> Result<Coefficients, String> {
        let v = BatchView::new(batch)?;
        let (ce, loss) = weighted_ce(&v, |_, _, _| 1.0);
        // per-head mean CE: head k's coefficients are 1/(n_k·H_valid) on its valid tokens
        let n = v.valid_counts();
        let used = n.iter().filter(|&&c| c > 0.0).count() as f64;
        let mut sums = vec![0f64; v.h];
        for (c, x) in ce
            .chunks_exact(v.h.max(1))
            .zip(batch.ce.chunks_exact(v.h.max(1)))
        {
            for k in 0..v.h {
                sums[k] += c[k] as f64 * x[k] as f64;
            }
        }
        let metrics = (0..v.h)
            .filter(|&k| n[k] > 0.0)
            .map(|k| (format!("ce_h{k}"), sums[k] * used))
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
