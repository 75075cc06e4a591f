//! Verifiable pipeline (design.md §5.3): MTP cross-entropy weighted per token by the critic's advantages.
//! 1. Advantages per sequence, `advantage = "gae"` (the default): δ_t = γ·V_t − V_{t−1}
//!    (V_{−1} = initial_value), A_t = δ_t + γλ·A_{t+1}, A ← A·m — the value head's V_T stands for the
//!    outcome, rewards are not read; or `advantage = "mc"`: A_t = r − V_t, A ← A·m (the original's
//!    Monte-Carlo special case of λ = γ = 1, which reads the sequence's reward).
//! 2. Â = (A − μ)/(σ + 1e−8) with (μ, σ) the EMA taken before this batch (training) or the batch's
//!    statistics (validation, or EMA off; unbiased std; ≤ 1 valid token → w = m);
//!    w = clamp(exp(Â/β), w_min, w_max)·m (a constant: no gradient flows through the weights).
//! 3. Head k at position t uses its target token's weight w[b, t+k+1]; the heads' losses combine with
//!    the weights λ of `head_weights` (uniform by default).
//! 4. after_step: the EMA takes the step's advantages (Σx, Σx², n all-reduced over ranks), with warm-up.
//!
//! Optional joint value loss (`value_coef` > 0, the policy's own value head): mc_mse or λ-return.

use wmtp_sdk::*;

/// The verifiable pipeline; its state is the advantage EMA and this step's running sums.
#[derive(Default)]
pub struct Verifiable {
    beta: f64,
    w_min: f64,
    w_max: f64,
    gamma: f64,
    lambda: f64,
    initial_value: f64,
    monte_carlo: bool,
    ema_on: bool,
    ema_warmup: u64,
    ema_alpha: f64,
    value_coef: f64,
    value_lambda_return: bool,
    normalize_by_weights: bool,
    ema: EmaStats,
    step_sums: [f64; 3],
    head_weights: HeadWeights,
}

const TAG: &[u8; 4] = b"vrf1";

settings! {
    /// The joint value loss.
    pub enum JointLoss { McMse, LambdaReturn }
}

settings! {
    /// How advantages are made.
    pub enum AdvantageKind { Gae, Mc }
}

settings! {
    /// The CE denominator.
    pub enum Normalize { Tokens, Weights }
}

settings! {
    /// `[ema]`: whitening statistics.
    pub struct EmaSettings {
        /// whiten with an EMA of advantage statistics (else batch statistics)
        enabled: bool = true,
        /// updates during which the EMA averages uniformly
        warmup: u64 = 10,
        /// EMA rate after warm-up
        alpha: f64 = 0.1,
    }
}

settings! {
    /// `[value_loss]`.
    pub struct JointValueLoss {
        /// joint value loss: mc_mse | lambda_return
        r#type: JointLoss = JointLoss::McMse,
    }
}

settings! {
    /// The `[plugin]` table of verifiable.
    pub struct VerifiableSettings {
        /// temperature β of w = exp(Â/β)
        beta: f64 = 1.0,
        /// lower clip of the weights
        w_min: f64 = 0.1,
        /// upper clip of the weights
        w_max: f64 = 3.0,
        /// discount γ of GAE
        gamma: f64 = 1.0,
        /// GAE λ
        td_lambda: f64 = 0.95,
        /// V_{-1}, the value before the first token
        initial_value: f64 = 0.5,
        /// advantages: gae (the GAE recursion over the values) | mc (reward − value)
        advantage: AdvantageKind = AdvantageKind::Gae,
        /// advantage whitening
        ema: EmaSettings = EmaSettings::default(),
        /// weight of the joint value loss training the policy's value head (0: values only weigh tokens)
        value_coef: f64 = 0.5,
        /// the joint value loss
        value_loss: JointValueLoss = JointValueLoss::default(),
        /// CE denominator: tokens (Σ M) or weights (Σ w·M)
        normalize: Normalize = Normalize::Tokens,
        /// per-head loss weights λ, head 0 first ([] = uniform; or { decay = d } for λ_k = d^k)
        head_weights: HeadWeights = HeadWeights::default(),
    }
}

impl Verifiable {
    /// Each target token's advantage A[b,t] ([B,T], 0 off the targets: GAE, or Monte-Carlo r − V) and
    /// the list of those on targets.
    fn advantages(&self, v: &BatchView, values: &[f32], rewards: &[f32]) -> (Vec<f64>, Vec<f64>) {
        let mut adv = vec![0f64; v.b * v.t];
        let mut valid = Vec::new();
        for b in 0..v.b {
            let Some(last) = last_target(v, b) else {
                continue;
            };
            let vb = &values[b * v.t..(b + 1) * v.t];
            let a = if self.monte_carlo {
                mc_advantages(vb, last, rewards[b] as f64)
            } else {
                gae(vb, last, self.gamma, self.lambda, self.initial_value)
            };
            for (t, &x) in a.iter().enumerate().filter(|&(t, _)| v.target(b, t)) {
                adv[v.idx2(b, t)] = x;
                valid.push(x);
            }
        }
        (adv, valid)
    }

    /// w[b,t] = clamp(exp((A − μ)/(σ + 1e-8)/β), w_min, w_max) on target tokens with `whiten` = (μ, σ),
    /// 1 without (a single token and no EMA); and how many were clipped.
    fn token_weights(
        &self,
        v: &BatchView,
        adv: &[f64],
        whiten: Option<(f64, f64)>,
    ) -> (Vec<f64>, usize) {
        let mut w = vec![0f64; v.b * v.t];
        let mut clipped = 0usize;
        for b in 0..v.b {
            for t in (0..v.t).filter(|&t| v.target(b, t)) {
                let i = v.idx2(b, t);
                w[i] = match whiten {
                    Some((mu, sigma)) => {
                        let raw = ((adv[i] - mu) / (sigma + 1e-8) / self.beta).exp();
                        clipped += (raw < self.w_min || raw > self.w_max) as usize;
                        raw.clamp(self.w_min, self.w_max)
                    }
                    None => 1.0,
                };
            }
        }
        (w, clipped)
    }

    /// The joint value head's regression loss and ∂/∂V: towards λ-returns of the reward (λ = 1 in
    /// validation), or towards the reward itself.
    fn value_loss(
        &self,
        v: &BatchView,
        values: &[f32],
        rewards: &[f32],
        train: bool,
    ) -> (f64, Vec<f32>) {
        let targets: Vec<Vec<f64>> = (0..v.b)
            .map(|b| match (last_target(v, b), self.value_lambda_return) {
                (Some(last), true) => lambda_returns(
                    &values[b * v.t..(b + 1) * v.t],
                    last,
                    rewards[b] as f64,
                    self.gamma,
                    if train { self.lambda } else { 1.0 },
                ),
                _ => vec![rewards[b] as f64; v.t],
            })
            .collect();
        value_regression(v, values, |b, t| targets[b][t], None)
    }
}

/// Statistics of the target tokens' weights: mean, std, min, max, normalised entropy and the share
/// clipped (none without target tokens).
fn weight_metrics(ws: &[f64], clipped: usize) -> Vec<(String, f64)> {
    if ws.is_empty() {
        return Vec::new();
    }
    let m = ws.iter().sum::<f64>() / ws.len() as f64;
    let var = ws.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / ws.len() as f64;
    let total: f64 = ws.iter().sum();
    let entropy = -ws
        .iter()
        .map(|x| x / total)
        .filter(|&p| p > 0.0)
        .map(|p| p * p.ln())
        .sum::<f64>();
    let norm = if ws.len() > 1 {
        entropy / (ws.len() as f64).ln()
    } else {
        1.0
    };
    vec![
        ("w_mean".to_string(), m),
        ("w_std".to_string(), var.sqrt()),
        (
            "w_min".to_string(),
            ws.iter().copied().fold(f64::INFINITY, f64::min),
        ),
        (
            "w_max".to_string(),
            ws.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        ),
        ("w_entropy".to_string(), norm),
        ("clip_ratio".to_string(), clipped as f64 / ws.len() as f64),
    ]
}

impl Pipeline for Verifiable {
    type Settings = VerifiableSettings;

    fn manifest() -> Manifest {
        ManifestBuilder::new("verifiable", env!("CARGO_PKG_VERSION"))
            .describe("critic-weighted MTP: per-token weights from whitened GAE advantages of the value head")
            .needs(&[InputKind::Values, InputKind::Rewards])
            .trains(&[ParamGroup::Lora, ParamGroup::Heads, ParamGroup::Trunk, ParamGroup::ValueHead])
            .value_gradients()
            .build()
    }

    fn configure(&mut self, s: VerifiableSettings) -> Result<(), String> {
        if s.beta <= 0.0 {
            return Err("plugin config key `beta` must be > 0".into());
        }
        if !(0.0 <= s.w_min && s.w_min <= s.w_max) {
            return Err("plugin config keys `w_min` ≤ `w_max` must hold, with w_min ≥ 0".into());
        }
        check_range("gamma", s.gamma, 0.0, 1.0)?;
        check_range("td_lambda", s.td_lambda, 0.0, 1.0)?;
        check_range("ema.alpha", s.ema.alpha, 0.0, 1.0)?;
        if s.value_coef < 0.0 {
            return Err("plugin config key `value_coef` must be ≥ 0".into());
        }
        (self.beta, self.w_min, self.w_max) = (s.beta, s.w_min, s.w_max);
        (self.gamma, self.lambda, self.initial_value) = (s.gamma, s.td_lambda, s.initial_value);
        self.monte_carlo = s.advantage == AdvantageKind::Mc;
        (self.ema_on, self.ema_warmup, self.ema_alpha) = (s.ema.enabled, s.ema.warmup, s.ema.alpha);
        self.value_coef = s.value_coef;
        self.value_lambda_return = s.value_loss.r#type == JointLoss::LambdaReturn;
        self.normalize_by_weights = s.normalize == Normalize::Weights;
        s.head_weights.check()?;
        self.head_weights = s.head_weights;
        Ok(())
    }

    fn weigh(&mut self, batch: &Batch, train: bool) -> Result<Coefficients, String> {
        let head_lambda = self.head_weights.resolve(batch.heads as usize)?;
        let v = BatchView::new(batch)?.with_head_weights(&head_lambda)?;
        let (values, rewards) = (v.values()?, v.rewards()?);
        // 1. advantages on target tokens, and their batch statistics
        let (adv, valid) = self.advantages(&v, values, rewards);
        let n = valid.len() as f64;
        let (sum, sum_sq) = valid
            .iter()
            .fold((0.0, 0.0), |(s, q), &x| (s + x, q + x * x));
        let batch_mean = if n > 0.0 { sum / n } else { 0.0 };
        let batch_std = if n > 1.0 {
            ((sum_sq - n * batch_mean * batch_mean) / (n - 1.0))
                .max(0.0)
                .sqrt()
        } else {
            0.0
        };
        // 2. whitening statistics and weights
        let use_ema = train && self.ema_on;
        let (mu, sigma) = if use_ema {
            (self.ema.mean, self.ema.std)
        } else {
            (batch_mean, batch_std)
        };
        let (w, clipped) =
            self.token_weights(&v, &adv, (use_ema || n > 1.0).then_some((mu, sigma)));
        if train {
            self.step_sums[0] += sum;
            self.step_sums[1] += sum_sq;
            self.step_sums[2] += n;
        }
        // 3. head k at t weighs its target token t+k+1
        let wk = |b: usize, t: usize, k: usize| w[v.idx2(b, t + k + 1)];
        let (ce, mut loss) = if self.normalize_by_weights {
            let d: Vec<f64> = (0..v.h)
                .map(|k| {
                    (0..v.b)
                        .flat_map(|b| (0..v.t).map(move |t| (b, t)))
                        .filter(|&(b, t)| v.valid(b, t, k))
                        .map(|(b, t)| wk(b, t, k))
                        .sum()
                })
                .collect();
            weighted_ce_with_denominators(&v, &d, wk)
        } else {
            weighted_ce(&v, wk)
        };
        let mut metrics = vec![
            ("adv_mean".to_string(), batch_mean),
            ("adv_std".to_string(), batch_std),
            ("ema_mean".to_string(), self.ema.mean),
            ("ema_std".to_string(), self.ema.std),
        ];
        let ws: Vec<f64> = (0..v.b * v.t)
            .filter(|&i| batch.target_mask[i] != 0)
            .map(|i| w[i])
            .collect();
        metrics.extend(weight_metrics(&ws, clipped));
        // 4. the joint value loss
        let value_grad = if self.value_coef > 0.0 {
            let (vl, g) = self.value_loss(&v, values, rewards, train);
            loss += self.value_coef * vl;
            metrics.push(("value_loss".to_string(), vl));
            Some(g.iter().map(|x| x * self.value_coef as f32).collect())
        } else {
            None
        };
        Ok(Coefficients {
            ce,
            values: value_grad,
            loss,
            metrics,
        })
    }

    fn after_step(&mut self, _step: u64) -> Result<(), String> {
        let s = all_reduce_sum(&self.step_sums);
        if s.len() != 3 {
            return Err(format!("all-reduce-sum returned {} numbers for 3", s.len()));
        }
        self.ema
            .update(s[0], s[1], s[2], self.ema_warmup, self.ema_alpha);
        self.step_sums = [0.0; 3];
        Ok(())
    }

    fn save_state(&self) -> Vec<u8> {
        let e = &self.ema;
        state::encode(
            TAG,
            &[
                e.mean,
                e.std,
                e.updates as f64,
                self.step_sums[0],
                self.step_sums[1],
                self.step_sums[2],
            ],
        )
    }

    fn load_state(&mut self, bytes: &[u8]) -> Result<(), String> {
        let s = state::decode(TAG, bytes, 6)?;
        self.ema = EmaStats {
            mean: s[0],
            std: s[1],
            updates: s[2] as u64,
        };
        self.step_sums = [s[3], s[4], s[5]];
        Ok(())
    }
}

export_pipeline!(Verifiable);
