//! The training step of a session: what `wmtp run` and the automatic reference stage loop over (the
//! step's parts, for any models and pipeline, are `step.rs`).

use super::session::Session;
use super::step::{accumulate, apply, StepReport};
use anyhow::Result;

/// One optimizer step of session `s` at step index `step`: `grad_accum` micro-batches forward, weighed
/// and backward, then clipping, the update and the pipeline's after-step. The one step that `wmtp run`
/// and the automatic reference stage both loop over.
pub fn train_step(s: &mut Session, step: u64) -> Result<StepReport> {
    let t = &s.cfg.training;
    let (accum, seed, max_norm) = (t.grad_accum, t.seed, t.max_grad_norm);
    let pad = s.tokenizer.eos_id.unwrap_or(0);
    let mut rep = {
        let p = s.step_parts();
        accumulate(
            &p.models, p.weigher, p.batcher, accum, step, seed, pad, p.grads,
        )?
    };
    apply(
        &mut s.model,
        s.strategy.as_mut(),
        s.value_head.as_mut(),
        s.weigher.as_mut(),
        s.optimizer.as_mut(),
        &mut s.grads,
        max_norm,
        &mut rep,
    )?;
    Ok(rep)
}
