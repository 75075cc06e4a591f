//! Quick model checks with head 0: next-token cross-entropy / perplexity of a token sequence and greedy
//! continuation (full recomputation per token; the KV-cached generator comes with evaluation).

use super::{ForwardCtx, Transformer};
use anyhow::{bail, Result};
use candle_core::{DType, IndexOp, Tensor, D};

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

/// exp of [`next_token_ce`].
pub fn perplexity(model: &Transformer, tokens: &[u32]) -> Result<f64> {
    Ok(next_token_ce(model, tokens)?.exp())
}

/// Appends up to `max_new` greedily chosen tokens (head 0) to `prompt`, stopping at `eos`.
pub fn greedy_continue(
    model: &Transformer,
    prompt: &[u32],
    max_new: usize,
    eos: Option<u32>,
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        bail!("the prompt is empty");
    }
    let mut tokens = prompt.to_vec();
    let ctx = ForwardCtx::eval();
    for _ in 0..max_new {
        if tokens.len() >= model.args.max_seq_len {
            break;
        }
        let n = tokens.len();
        let input = Tensor::new(tokens.as_slice(), model.device())?.unsqueeze(0)?;
        let bi = model.block_inputs(n)?;
        let h = model.trunk(&input, &bi, &ctx)?;
        // the head block attends over all positions: run it on the whole sequence, keep the last row
        let z = model.head(0).forward(&h, &bi.rope, &bi.mask, &ctx)?;
        let last = model.logits(&z.i((.., n - 1..))?.contiguous()?, &ctx)?;
        let next = last.flatten_all()?.argmax(0)?.to_scalar::<u32>()?;
        tokens.push(next);
        if Some(next) == eos {
            break;
        }
    }
    Ok(tokens)
}
