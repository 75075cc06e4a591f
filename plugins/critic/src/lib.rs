//! Critic pipeline (design.md §5.2): trains the value head; the policy's CE coefficients are 0.
//! `mc_mse`: target G = r[b] on every response token; per-sequence masked mean of (V − G)² (or smooth-L1,
//! δ = 0.5), then the mean over sequences with a response. `lambda_return`: G_last = r,
//! G_t = (1−λ)·γ·V_{t+1} + λ·γ·G_{t+1} (no gradient through targets), λ from a schedule, λ = 1 in
//! validation. `pairwise`: L = coef · mean over (pos, neg) pairs of −log σ(v̄_pos − v̄_neg).

use wmtp_sdk::*;

#[derive(Default, Clone, Copy, PartialEq)]
enum Loss {
    #[default]
    McMse,
    LambdaReturn,
    Pairwise,
}

/// λ schedule: hold `start` for `warmup` steps, then go to `end` over `decay` steps.
#[derive(Default, Clone, Copy)]
struct Schedule {
    kind: u8, // 0 constant, 1 linear, 2 cosine
    start: f64,
    end: f64,
    warmup: u64,
    decay: u64,
}

impl Schedule {
    fn at(&self, step: u64) -> f64 {
        if self.kind == 0 || step < self.warmup {
            return self.start;
        }
        let p = if self.decay == 0 {
            1.0
        } else {
            ((step - self.warmup) as f64 / self.decay as f64).min(1.0)
        };
        match self.kind {
            1 => self.start + (self.end - self.start) * p,
            _ => {
                self.end + (self.start - self.end) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
            }
        }
    }
}

/// The critic pipeline (stateless).
#[derive(Default)]
pub struct Critic {
    loss: Loss,
    huber: Option<f64>,
    gamma: f64,
    pairwise_coef: f64,
    lambda: Schedule,
}

impl Pipeline for Critic {
    fn manifest() -> Manifest {
        let mut m = manifest(
            "critic",
            env!("CARGO_PKG_VERSION"),
            "value-head training on sample correctness (Monte-Carlo, λ-return or pairwise)",
            &[InputKind::Values, InputKind::Rewards, InputKind::Pairs],
            &[ParamGroup::ValueHead, ParamGroup::Lora],
            &[
                (
                    "value_loss.type",
                    "\"mc_mse\"",
                    "mc_mse | lambda_return | pairwise",
                ),
                (
                    "value_loss.huber",
                    "false",
                    "smooth-L1 instead of squared error (mc_mse, lambda_return)",
                ),
                ("value_loss.huber_delta", "0.5", "smooth-L1 threshold δ"),
                ("value_loss.gamma", "1.0", "discount γ of λ-returns"),
                (
                    "value_loss.pairwise_coef",
                    "1.0",
                    "scale of the pairwise ranking loss",
                ),
                (
                    "lambda.schedule",
                    "\"constant\"",
                    "constant | linear | cosine (λ-return's λ over steps)",
                ),
                ("lambda.start", "0.95", "λ for the first warmup_steps"),
                ("lambda.end", "0.95", "λ after decay_steps more"),
                ("lambda.warmup_steps", "0", "steps λ holds its start value"),
                ("lambda.decay_steps", "1000", "steps from start to end"),
            ],
        );
        m.uses_ce = false;
        m.uses_values_grad = true;
        m
    }

    fn configure(&mut self, cfg: &Config) -> Result<(), String> {
        self.loss = match cfg
            .choice("value_loss.type", &["mc_mse", "lambda_return", "pairwise"])?
            .as_str()
        {
            "lambda_return" => Loss::LambdaReturn,
            "pairwise" => Loss::Pairwise,
            _ => Loss::McMse,
        };
        let delta = cfg.f64("value_loss.huber_delta")?;
        if delta <= 0.0 {
            return Err("plugin config key `value_loss.huber_delta` must be > 0".into());
        }
        self.huber = cfg.bool("value_loss.huber")?.then_some(delta);
        self.gamma = cfg.f64_in("value_loss.gamma", 0.0, 1.0)?;
        self.pairwise_coef = cfg.f64("value_loss.pairwise_coef")?;
        self.lambda = Schedule {
            kind: match cfg
                .choice("lambda.schedule", &["constant", "linear", "cosine"])?
                .as_str()
            {
                "linear" => 1,
                "cosine" => 2,
                _ => 0,
            },
            start: cfg.f64_in("lambda.start", 0.0, 1.0)?,
            end: cfg.f64_in("lambda.end", 0.0, 1.0)?,
            warmup: cfg.u64("lambda.warmup_steps")?,
            decay: cfg.u64("lambda.decay_steps")?,
        };
        Ok(())
    }

    fn weigh(&mut self, batch: &Batch, train: bool) -> Result<Coefficients, String> {
        let v = BatchView::new(batch)?;
        let (values, rewards) = (v.values()?, v.rewards()?);
        let mut metrics = Vec::new();
        let lambda = if train {
            self.lambda.at(batch.step)
        } else {
            1.0
        };
        let (loss, grad) = match self.loss {
            Loss::McMse => value_regression(&v, values, |b, _| rewards[b] as f64, self.huber),
            Loss::LambdaReturn => {
                let targets: Vec<Vec<f64>> = (0..v.b)
                    .map(|b| match last_target(&v, b) {
                        Some(last) => lambda_returns(
                            &values[b * v.t..(b + 1) * v.t],
                            last,
                            rewards[b] as f64,
                            self.gamma,
                            lambda,
                        ),
                        None => Vec::new(),
                    })
                    .collect();
                metrics.push(("lambda".to_string(), lambda));
                value_regression(&v, values, |b, t| targets[b][t], self.huber)
            }
            Loss::Pairwise => {
                let ids = batch.pair_ids.as_deref().ok_or("batch has no pair-ids")?;
                let p = pairwise_ranking(&v, values, ids, rewards, self.pairwise_coef);
                (p.loss, p.grad)
            }
        };
        if let Some(ids) = batch.pair_ids.as_deref() {
            let p = pairwise_ranking(&v, values, ids, rewards, 1.0);
            if p.pairs > 0 {
                metrics.push(("pairwise_accuracy".to_string(), p.accuracy));
                metrics.push(("margin".to_string(), p.margin));
            }
        }
        metrics.push(("value_loss".to_string(), loss));
        metrics.push((
            "value_mean".to_string(),
            masked_mean(values, &batch.target_mask),
        ));
        Ok(Coefficients {
            ce: Vec::new(), // uses-ce = false: no CE coefficients (all zero)
            values: Some(grad),
            loss,
            metrics,
        })
    }
}

export_pipeline!(Critic);
