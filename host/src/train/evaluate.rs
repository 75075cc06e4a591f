//! Evaluation, in one place: validation of a session (plain head-averaged CE, the pipeline's loss with
//! `train = false`, its metrics) over held-out items (a saved checkpoint's: `host/src/checkpoint/evaluate.rs`),
//! and next-token cross-entropy / perplexity of a text under head 0 (`wmtp perplexity`).

use super::head_ce::{head_ce_sums, plain_ce};
use super::session::Session;
use super::step::{forward_and_batch, Models, Weigher};
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

/// Validation over `items` (None when there are none).
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
    let mut v = Validation::default();
    let (mut head_sum, mut head_n) = (Vec::<f64>::new(), Vec::<f64>::new());
    for _ in 0..n {
        let (samples, ids) = b.next_samples();
        let mb = collate(&samples, ids, pad, m.model.device())?;
        let (_, st, batch) = forward_and_batch(m, w, &mb, 0, 0, false)?;
        v.ce += plain_ce(&st) / n as f64;
        let (s, c) = head_ce_sums(&st);
        head_sum.resize(s.len(), 0.0);
        head_n.resize(c.len(), 0.0);
        for k in 0..s.len() {
            head_sum[k] += s[k];
            head_n[k] += c[k];
        }
        let c = w.weigh(&batch, false)?;
        v.loss += c.loss / n as f64;
        for (k, x) in c.metrics {
            match v.metrics.iter_mut().find(|(name, _)| *name == k) {
                Some(e) => e.1 += x / n as f64,
                None => v.metrics.push((k, x / n as f64)),
            }
        }
    }
    v.ce_heads = head_sum
        .iter()
        .zip(&head_n)
        .map(|(s, n)| if *n > 0.0 { s / n } else { f64::NAN })
        .collect();
    Ok(Some(v))
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
