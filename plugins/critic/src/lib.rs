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

settings! {
    /// Which value loss trains the head.
    pub enum LossType { McMse, LambdaReturn, Pairwise }
}

settings! {
    /// How λ moves over training steps.
    pub enum ScheduleKind { Constant, Linear, Cosine }
}

settings! {
    /// `[value_loss]`.
    pub struct ValueLossSettings {
        /// mc_mse | lambda_return | pairwise
        r#type: LossType = LossType::McMse,
        /// smooth-L1 instead of squared error (mc_mse, lambda_return)
        huber: bool = false,
        /// smooth-L1 threshold δ
        huber_delta: f64 = 0.5,
        /// discount γ of λ-returns
        gamma: f64 = 1.0,
        /// scale of the pairwise ranking loss
        pairwise_coef: f64 = 1.0,
    }
}

settings! {
    /// `[lambda]`: the λ of λ-returns over steps.
    pub struct LambdaSettings {
        /// constant | linear | cosine (λ-return's λ over steps)
        schedule: ScheduleKind = ScheduleKind::Constant,
        /// λ for the first warmup_steps
        start: f64 = 0.95,
        /// λ after decay_steps more
        end: f64 = 0.95,
        /// steps λ holds its start value
        warmup_steps: u64 = 0,
        /// steps from start to end
        decay_steps: u64 = 1000,
    }
}

settings! {
    /// The `[plugin]` table of the critic.
    pub struct CriticSettings {
        /// the value loss
        value_loss: ValueLossSettings = ValueLossSettings::default(),
        /// the λ schedule of λ-returns
        lambda: LambdaSettings = LambdaSettings::default(),
    }
}

impl Pipeline for Critic {
    type Settings = CriticSettings;

    fn manifest() -> Manifest {
        ManifestBuilder::new("critic", env!("CARGO_PKG_VERSION"))
            .describe(
                "value-head training on sample correctness (Monte-Carlo, λ-return or pairwise)",
            )
            .needs(&[InputKind::Values, InputKind::Rewards, InputKind::Pairs])
            .trains(&[ParamGroup::ValueHead, ParamGroup::Lora])
            .value_gradients()
            .no_ce_gradients()
            .build()
    }

    fn configure(&mut self, s: CriticSettings) -> Result<(), String> {
        let (vl, l) = (&s.value_loss, &s.lambda);
        self.loss = match vl.r#type {
            LossType::McMse => Loss::McMse,
            LossType::LambdaReturn => Loss::LambdaReturn,
            LossType::Pairwise => Loss::Pairwise,
        };
        if vl.huber_delta <= 0.0 {
            return Err("plugin config key `value_loss.huber_delta` must be > 0".into());
        }
        self.huber = vl.huber.then_some(vl.huber_delta);
        check_range("value_loss.gamma", vl.gamma, 0.0, 1.0)?;
        check_range("lambda.start", l.start, 0.0, 1.0)?;
        check_range("lambda.end", l.end, 0.0, 1.0)?;
        self.gamma = vl.gamma;
        self.pairwise_coef = vl.pairwise_coef;
        self.lambda = Schedule {
            kind: match l.schedule {
                ScheduleKind::Constant => 0,
                ScheduleKind::Linear => 1,
                ScheduleKind::Cosine => 2,
            },
            start: l.start,
            end: l.end,
            warmup: l.warmup_steps,
            decay: l.decay_steps,
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
