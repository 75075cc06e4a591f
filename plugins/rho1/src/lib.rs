//! Rho-1 selective MTP (design.md §5.4). For head k the reference loss of the same target token is
//! R_k[b,t] = R[b, t+k]; the excess is e = CE − R_k (`signed`), |CE − R_k| (`absolute`) or R_k
//! (`difficult`). Per head, over the batch's valid tokens, thr_k = quantile(e, 1 − k_percent) with linear
//! interpolation, and w = 1[e ≥ thr_k]·M. Training keeps the denominator n_k = Σ M; validation reports the
//! CE over the selected tokens (denominator Σ w). Heads combine with the weights λ of `head_weights`.

use wmtp_sdk::*;

settings! {
    /// Which excess selects tokens.
    pub enum Mode {
        /// CE − ref
        Signed,
        /// |CE − ref|
        Absolute,
        /// ref
        Difficult,
    }
}

settings! {
    /// The `[plugin]` table of rho1.
    pub struct Rho1Settings {
        /// share of valid tokens kept per head, in (0, 1]
        k_percent: f64 = 0.6,
        /// excess: signed (CE − ref), absolute (|CE − ref|) or difficult (ref)
        mode: Mode = Mode::Signed,
        /// per-head loss weights λ, head 0 first ([] = uniform; or { decay = d } for λ_k = d^k)
        head_weights: HeadWeights = HeadWeights::default(),
    }
}

/// The Rho-1 pipeline (stateless).
#[derive(Default)]
pub struct Rho1 {
    s: Rho1Settings,
}

impl Pipeline for Rho1 {
    type Settings = Rho1Settings;

    fn manifest() -> Manifest {
        ManifestBuilder::new("rho1", env!("CARGO_PKG_VERSION"))
            .describe(
                "Rho-1: train each head on the tokens whose loss most exceeds a reference model's",
            )
            .needs(&[InputKind::Reference])
            .trains(&[ParamGroup::Lora, ParamGroup::Heads, ParamGroup::Trunk])
            .build()
    }

    fn configure(&mut self, s: Rho1Settings) -> Result<(), String> {
        check_range("k_percent", s.k_percent, 0.0, 1.0)?;
        if s.k_percent == 0.0 {
            return Err("plugin config key `k_percent` must be > 0".into());
        }
        s.head_weights.check()?;
        self.s = s;
        Ok(())
    }

    fn weigh(&mut self, batch: &Batch, train: bool) -> Result<Coefficients, String> {
        let lambda = self.s.head_weights.resolve(batch.heads as usize)?;
        let v = BatchView::new(batch)?.with_head_weights(&lambda)?;
        let r = v.ref_ce()?;
        let excess = |b: usize, t: usize, k: usize| {
            let rk = r[v.idx2(b, t + k)] as f64;
            let ce = v.ce(b, t, k) as f64;
            match self.s.mode {
                Mode::Signed => ce - rk,
                Mode::Absolute => (ce - rk).abs(),
                Mode::Difficult => rk,
            }
        };
        let mut selected = vec![false; v.b * v.t * v.h];
        let mut metrics = Vec::new();
        let mut n_sel = vec![0f64; v.h];
        for k in 0..v.h {
            let cells: Vec<(usize, usize)> = (0..v.b)
                .flat_map(|b| (0..v.t).map(move |t| (b, t)))
                .filter(|&(b, t)| v.valid(b, t, k))
                .collect();
            let es: Vec<f64> = cells.iter().map(|&(b, t)| excess(b, t, k)).collect();
            let Some(thr) = quantile_linear(&mut es.clone(), 1.0 - self.s.k_percent) else {
                continue;
            };
            let (mut s_sum, mut r_sum, mut r_n) = (0.0, 0.0, 0usize);
            for (&(b, t), &e) in cells.iter().zip(&es) {
                if e >= thr {
                    selected[v.idx3(b, t, k)] = true;
                    n_sel[k] += 1.0;
                    s_sum += e;
                } else {
                    r_sum += e;
                    r_n += 1;
                }
            }
            metrics.push((
                format!("selected_ratio_h{k}"),
                n_sel[k] / cells.len() as f64,
            ));
            metrics.push((format!("excess_selected_h{k}"), s_sum / n_sel[k].max(1.0)));
            if r_n > 0 {
                metrics.push((format!("excess_rejected_h{k}"), r_sum / r_n as f64));
            }
        }
        let w = |b: usize, t: usize, k: usize| if selected[v.idx3(b, t, k)] { 1.0 } else { 0.0 };
        let (ce, loss) = if train {
            weighted_ce(&v, w)
        } else {
            weighted_ce_with_denominators(&v, &n_sel, w)
        };
        Ok(Coefficients {
            ce,
            values: None,
            loss,
            metrics,
        })
    }
}

export_pipeline!(Rho1);
