//! Text generation with head 0: greedy continuation (full recomputation per token).

use super::{ForwardCtx, Transformer};
use anyhow::{bail, Result};
use candle_core::{IndexOp, Tensor};

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
