//! Evaluation, in one place: validation of a session (plain head-averaged CE, the pipeline's loss with
//! `train = false`, its metrics) over held-out items (a saved checkpoint's: `host/src/checkpoint/evaluate.rs`),
//! and next-token cross-entropy / perplexity of a text under head 0 (`wmtp perplexity`).

use super::head_ce::{head_ce_sums, plain_ce};
use super::session::Session;
use super::step::{add_metrics, forward_and_batch, Models, Weigher};
use crate::data::batcher::{collate, Batcher, Items};
use crate::model::{ForwardCtx, Transformer};
use anyhow::{bail, Result};
use candle_core::{DType, IndexOp, Tensor, D};

/// Validation results: plain CE, pipeline loss (train = false) and plugin metrics, averaged over batches.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Validation {
    /// Unweighted CE: per batch the mean over heads of each head's mean CE, averaged over batches.
    pub ce: f64,
    /// Each head's unweighted CE over all validation tokens: ce_heads[k] = Σ m·CE[·,k] / Σ m (head 0 is
    /// the plain next-token CE); NaN for a head without tokens.
    pub ce_heads: Vec<f64>,
    /// The pipeline's loss.
    pub loss: f64,
    /// The plugin's metrics.
    pub metrics: Vec<(String, f64)>,
}

/// Validation over `items` (None when there are none), split over the ranks of `m.strategy`: rank r
/// evaluates batches r, r+W, … and the sums are added over the ranks, so every rank returns the same
/// result as one rank evaluating every batch (to rounding). Every rank runs the same number of forwards
/// (⌈n/W⌉: collectives stay in step under FSDP); a rank left without a batch in the last round repeats
/// one with weight 0.
pub fn evaluate(
    m: &Models,
    w: &mut dyn Weigher,
    items: &Items,
    batch_items: usize,
    pad: u32,
) -> Result<Option<Validation>> {
    let mut b = match Batcher::new(items.clone(), batch_items, 0) {
        Ok(b) => b,
        Err(_) => return Ok(None),
    };
    let n = b.batches_per_epoch();
    let (rank, world) = (m.strategy.rank(), m.strategy.world_size().max(1));
    // batch i of the stream is rank (i mod W)'s; past the end a rank repeats batch 0 with weight 0
    // until every rank has run ⌈n/W⌉ (only batch 0 is held beyond its turn)
    let first = b.next_samples();
    let mut sums = ValidationSums::default();
    for i in 0..n.div_ceil(world) * world {
        let drawn = (i > 0 && i < n).then(|| b.next_samples());
        if i % world != rank {
            continue;
        }
        let (samples, ids) = drawn.as_ref().unwrap_or(&first);
        let mb = collate(samples, ids.clone(), pad, m.model.device())?;
        let (_, st, batch) = forward_and_batch(m, w, &mb, 0, 0, false)?;
        let c = w.weigh(&batch, false)?;
        sums.add(&st, &c, if i < n { 1.0 } else { 0.0 });
    }
    Ok(Some(sums.over_ranks(m, n)?))
}

/// One rank's sums of a validation: Σ plain CE, Σ loss and Σ metric over its batches, and each head's
/// Σ m·CE and Σ m over its tokens.
#[derive(Debug, Default)]
struct ValidationSums {
    ce: f64,
    loss: f64,
    head_sum: Vec<f64>,
    head_n: Vec<f64>,
    metrics: Vec<(String, f64)>,
}

impl ValidationSums {
    /// Adds one batch's forward and coefficients, times `weight` (0 for a repeated batch).
    fn add(
        &mut self,
        st: &super::engine::ForwardState,
        c: &wmtp_plugin_host::Coefficients,
        weight: f64,
    ) {
        self.ce += weight * plain_ce(st);
        let (s, n) = head_ce_sums(st);
        self.head_sum.resize(s.len(), 0.0);
        self.head_n.resize(n.len(), 0.0);
        for k in 0..s.len() {
            self.head_sum[k] += weight * s[k];
            self.head_n[k] += weight * n[k];
        }
        self.loss += weight * c.loss;
        add_metrics(&mut self.metrics, &c.metrics, weight);
    }

    /// The sums added over the ranks, as means over the `n` batches (head CE over tokens).
    fn over_ranks(self, m: &Models, n: usize) -> Result<Validation> {
        let h = self.head_sum.len();
        let mut xs = vec![self.ce, self.loss, h as f64, self.metrics.len() as f64];
        xs.extend(&self.head_sum);
        xs.extend(&self.head_n);
        xs.extend(self.metrics.iter().map(|(_, x)| *x));
        let world = m.strategy.world_size().max(1) as f64;
        // every rank must send the same layout: the counts of heads and metrics travel first
        let shape = m
            .strategy
            .sum_over_ranks(&[xs.len() as f64, xs[2], xs[3]])?;
        if shape != [world * xs.len() as f64, world * xs[2], world * xs[3]] {
            bail!(
                "validation: the ranks disagree on the number of heads or plugin metrics \
                 (this rank: {h} heads, metrics {:?})",
                self.metrics.iter().map(|(k, _)| k).collect::<Vec<_>>()
            );
        }
        let t = m.strategy.sum_over_ranks(&xs)?;
        let (head_sum, rest) = t[4..].split_at(h);
        let (head_n, metric_sums) = rest.split_at(h);
        let n = n as f64;
        Ok(Validation {
            ce: t[0] / n,
            loss: t[1] / n,
            ce_heads: head_sum
                .iter()
                .zip(head_n)
                .map(|(s, c)| if *c > 0.0 { s / c } else { f64::NAN })
                .collect(),
            metrics: self
                .metrics
                .into_iter()
                .zip(metric_sums)
                .map(|((k, _), x)| (k, x / n))
                .collect(),
        })
    }
}

impl Session {
    /// Validation on the session's held-out items (None without any).
    pub fn validate(&mut self) -> Result<Option<Validation>> {
        let (batch, pad) = (
            self.cfg.training.batch_size,
            self.tokenizer.eos_id.unwrap_or(0),
        );
        let p = self.step_parts();
        evaluate(&p.models, p.weigher, p.val, batch, pad)
    }
}

/// Mean next-token cross-entropy (nats) of `tokens` under head 0: mean over t of −log p(x[t+1] | x[..=t]).
pub fn next_token_ce(model: &Transformer, tokens: &[u32]) -> Result<f64> {
    if tokens.len() < 2 {
        bail!("need at least 2 tokens to score, got {}", tokens.len());
    }
    let n = tokens.len();
    let input = Tensor::new(tokens, model.device())?.unsqueeze(0)?;
    let bi = model.block_inputs(n)?;
    let ctx = ForwardCtx::eval();
    let h = model.trunk(&input, &bi, &ctx)?;
    let z = model.head(0).forward(&h, &bi.rope, &bi.mask, &ctx)?;
    let logits = model
        .logits(&z, &ctx)?
        .i((0, ..n - 1))?
        .to_dtype(DType::F32)?;
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let targets = Tensor::new(&tokens[1..], model.device())?.unsqueeze(1)?;
    let picked = logp.gather(&targets, 1)?;
    Ok(-(picked.mean_all()?.to_scalar::<f32>()? as f64))
}

/// A text's next-token cross-entropy scored in windows ([`windowed_next_token_ce`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowedCe {
    /// Mean −log p over the scored tokens (nats).
    pub ce: f64,
    /// Tokens scored (each once).
    pub scored: usize,
    /// Forward passes (windows).
    pub windows: usize,
}

/// Next-token cross-entropy of a text of any length under head 0, by a sliding window (as Hugging
/// Face's fixed-length-model perplexity with a stride): windows of at most `context` tokens start every
/// `stride` tokens; each window scores only the tokens no earlier window scored, so every token after
/// the first is scored once, with up to `context − stride` tokens of earlier text as context (with
/// `stride = context`, the windows do not overlap and each window's first token goes unscored). A text
/// that fits one window is scored exactly as [`next_token_ce`] scores it.
pub fn windowed_next_token_ce(
    model: &Transformer,
    tokens: &[u32],
    context: usize,
    stride: usize,
) -> Result<WindowedCe> {
    let n = tokens.len();
    if n < 2 {
        bail!("need at least 2 tokens to score, got {n}");
    }
    if context < 2 || context > model.args.max_seq_len {
        bail!(
            "context {context}: must be 2 to the model's max_seq_len {}",
            model.args.max_seq_len
        );
    }
    if stride == 0 || stride > context {
        bail!("stride {stride}: must be 1 to the context ({context})");
    }
    let ctx = ForwardCtx::eval();
    let (mut nll, mut scored, mut windows) = (0.0f64, 0usize, 0usize);
    let (mut begin, mut next_target) = (0usize, 1usize);
    loop {
        let end = (begin + context).min(n);
        let first = next_target.max(begin + 1);
        if first < end {
            let window = &tokens[begin..end];
            let len = window.len();
            let input = Tensor::new(window, model.device())?.unsqueeze(0)?;
            let bi = model.block_inputs(len)?;
            let h = model.trunk(&input, &bi, &ctx)?;
            let z = model.head(0).forward(&h, &bi.rope, &bi.mask, &ctx)?;
            // logits at window positions first−1 .. end−2 predict tokens first .. end−1
            let logits = model
                .logits(&z, &ctx)?
                .i((0, first - 1 - begin..end - 1 - begin))?
                .to_dtype(DType::F32)?;
            let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
            let targets = Tensor::new(&tokens[first..end], model.device())?.unsqueeze(1)?;
            nll -= logp.gather(&targets, 1)?.sum_all()?.to_scalar::<f32>()? as f64;
            scored += end - first;
            windows += 1;
        }
        next_target = end;
        if end == n {
            break;
        }
        begin += stride;
    }
    Ok(WindowedCe {
        ce: nll / scored.max(1) as f64,
        scored,
        windows,
    })
}

/// exp of [`next_token_ce`].
pub fn perplexity(model: &Transformer, tokens: &[u32]) -> Result<f64> {
    Ok(next_token_ce(model, tokens)?.exp())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelArgs;
    use candle_core::Device;

    /// One of two ranks run as threads of this process: sums over the ranks through a shared slot pair
    /// and a barrier, lends the model itself, and counts the forwards (one embedding lend each).
    struct ThreadRank {
        rank: usize,
        slots: std::sync::Arc<(std::sync::Barrier, std::sync::Mutex<[Vec<f64>; 2]>)>,
        forwards: std::sync::atomic::AtomicUsize,
    }

    impl crate::parallel::strategy::Strategy for ThreadRank {
        fn rank(&self) -> usize {
            self.rank
        }
        fn world_size(&self) -> usize {
            2
        }
        fn with_units<'m>(
            &self,
            model: &'m Transformer,
            units: &[crate::model::Unit],
            _next: Option<crate::model::Unit>,
        ) -> Result<std::borrow::Cow<'m, Transformer>> {
            if units.contains(&crate::model::Unit::Embedding) {
                self.forwards
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(std::borrow::Cow::Borrowed(model))
        }
        fn unit_backward_done(
            &self,
            _unit: crate::model::Unit,
            _grads: &mut crate::model::grads::Grads,
        ) -> Result<()> {
            Ok(())
        }
        fn sum_over_ranks(&self, xs: &[f64]) -> Result<Vec<f64>> {
            let (barrier, slots) = &*self.slots;
            slots.lock().expect("slots")[self.rank] = xs.to_vec();
            barrier.wait();
            let sum = {
                let s = slots.lock().expect("slots");
                s[0].iter().zip(&s[1]).map(|(a, b)| a + b).collect()
            };
            barrier.wait(); // both have read before either writes again
            Ok(sum)
        }
        fn update(
            &mut self,
            _policy: &mut Transformer,
            _replicated: &mut [crate::parallel::strategy::Replicated<'_>],
            _opt: &mut dyn crate::optim::Optimizer,
            _grads: &mut crate::model::grads::Grads,
            _max_grad_norm: f64,
        ) -> Result<crate::parallel::strategy::Update> {
            bail!("validation does not update")
        }
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
    }

    /// Validation over two ranks (threads) returns on both what one rank returns alone, each rank
    /// running ⌈n/2⌉ forwards: 5 batches → 3 each, the last round's second batch a weight-0 repeat.
    #[test]
    fn validation_split_over_two_ranks_equals_one_rank() -> Result<()> {
        use crate::data::dataset::Sample;
        use crate::parallel::strategy::{NoSharding, Strategy};
        use crate::train::step::NativeBaseline;
        let args = ModelArgs::preset("tiny").expect("tiny preset");
        let model = Transformer::random(args, 4, DType::F32, &Device::Cpu)?;
        let v = model.args.vocab_size as u32;
        let samples: Vec<Sample> = (0..10u32)
            .map(|i| {
                let len = 6 + (i as usize * 5) % 9;
                Sample {
                    ids: (0..len as u32).map(|j| (i * 31 + j * 7 + 3) % v).collect(),
                    mask: (0..len).map(|j| u8::from(j >= 2)).collect(),
                    reward: 1.0,
                    problem: format!("p{i}"),
                }
            })
            .collect();
        let items = Items::Single(samples);
        let run = |strategy: &dyn Strategy| -> Result<Validation> {
            let models = Models {
                model: &model,
                value_head: None,
                reference: None,
                critic: None,
                chunk_rows: 16,
                checkpointing: crate::train::config::ActivationCheckpointing::Blocks,
                selective_blocks: None,
                strategy,
                detach_extra_heads: false,
            };
            let mut w = NativeBaseline::default();
            Ok(evaluate(&models, &mut w, &items, 2, 0)?.expect("items"))
        };
        let alone = run(&NoSharding)?;
        let slots = std::sync::Arc::new((
            std::sync::Barrier::new(2),
            std::sync::Mutex::new([Vec::new(), Vec::new()]),
        ));
        let ranks: Vec<ThreadRank> = (0..2)
            .map(|rank| ThreadRank {
                rank,
                slots: slots.clone(),
                forwards: Default::default(),
            })
            .collect();
        let split: Vec<Validation> = std::thread::scope(|s| {
            let handles: Vec<_> = ranks.iter().map(|r| s.spawn(|| run(r))).collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("rank thread"))
                .collect::<Result<_>>()
        })?;
        for (r, v) in ranks.iter().zip(&split) {
            assert_eq!(r.forwards.load(std::sync::atomic::Ordering::Relaxed), 3);
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(1.0);
            assert!(
                close(v.ce, alone.ce),
                "rank {}: ce {} vs {}",
                r.rank,
                v.ce,
                alone.ce
            );
            assert!(close(v.loss, alone.loss), "rank {}: loss", r.rank);
            assert_eq!(v.ce_heads.len(), alone.ce_heads.len());
            for (a, b) in v.ce_heads.iter().zip(&alone.ce_heads) {
                assert!(close(*a, *b), "rank {}: head CE {a} vs {b}", r.rank);
            }
            assert_eq!(v.metrics.len(), alone.metrics.len());
        }
        assert!(alone.ce > 0.0 && alone.ce.is_finite());
        Ok(())
    }

    fn model_and_text(n: usize) -> (Transformer, Vec<u32>) {
        let args = ModelArgs::preset("tiny").expect("tiny preset");
        let m = Transformer::random(args, 3, DType::F32, &Device::Cpu).unwrap();
        let v = m.args.vocab_size as u32;
        (m, (0..n as u32).map(|i| (i * 37 + 11) % v).collect())
    }

    #[test]
    fn one_window_scores_as_the_whole_text_does() -> Result<()> {
        let (m, t) = model_and_text(40);
        let whole = next_token_ce(&m, &t)?;
        let w = windowed_next_token_ce(&m, &t, 64, 32)?;
        assert_eq!((w.scored, w.windows), (39, 1));
        assert!((w.ce - whole).abs() < 1e-6, "{} vs {whole}", w.ce);
        Ok(())
    }

    #[test]
    fn windows_sharing_one_token_score_every_token_of_each_window_once() -> Result<()> {
        // stride = context − 1: window k is tokens [15k, 15k + 16), scoring all of its 15 targets
        let (m, t) = model_and_text(100);
        let (c, s) = (16, 15);
        let w = windowed_next_token_ce(&m, &t, c, s)?;
        let (mut nll, mut n) = (0.0, 0);
        let mut begin = 0;
        while begin + 1 < t.len() {
            let win = &t[begin..(begin + c).min(t.len())];
            nll += next_token_ce(&m, win)? * (win.len() - 1) as f64;
            n += win.len() - 1;
            if begin + c >= t.len() {
                break;
            }
            begin += s;
        }
        assert_eq!(w.scored, 99);
        assert_eq!(n, 99);
        assert!(
            (w.ce - nll / n as f64).abs() < 1e-5,
            "{} vs {}",
            w.ce,
            nll / n as f64
        );
        // overlapping windows (more context per token) still score each token once
        let half = windowed_next_token_ce(&m, &t, c, c / 2)?;
        assert_eq!(half.scored, 99);
        assert!(half.windows > w.windows && half.ce.is_finite());
        Ok(())
    }

    #[test]
    fn a_window_longer_than_the_model_or_a_zero_stride_is_refused() {
        let (m, t) = model_and_text(10);
        let too_long = m.args.max_seq_len + 1;
        assert!(windowed_next_token_ce(&m, &t, too_long, 4).is_err());
        assert!(windowed_next_token_ce(&m, &t, 8, 0).is_err());
        assert!(windowed_next_token_ce(&m, &t, 8, 9).is_err());
    }
}
