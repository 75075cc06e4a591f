//! Switching a session between the `[[stages]]` of its run (the stages themselves, as configured, are
//! `stages.rs`): at a stage's first step, its trained parameters and a fresh optimiser.

use super::session::{optimizer_for, Session};
use super::stages::stage_at;
use super::trainable::{narrow_trainable, trained_groups};
use crate::model::{ParamGroup, VisitParams};
use anyhow::{bail, Result};

/// Puts session `s` in the stage of optimizer step `step`: when it differs from the current one, sets
/// the trained parameters and a fresh optimiser for it, and returns a line naming it (None otherwise,
/// and always without stages).
pub fn enter_stage(s: &mut Session, step: u64) -> Result<Option<String>> {
    if s.cfg.stages.is_empty() {
        return Ok(None);
    }
    let (i, start) = stage_at(&s.cfg.stages, step);
    if s.stage == Some(i) {
        return Ok(None);
    }
    if s.strategy.sharded() {
        bail!("[[stages]] is not supported in sharded (launched) runs yet");
    }
    let stage = s.cfg.stages[i].clone();
    let t = stage.training(&s.cfg.training);
    let groups = trained_groups(&t, s.weigher.manifest());
    let model_groups: Vec<ParamGroup> = groups
        .iter()
        .copied()
        .filter(|g| *g != ParamGroup::ValueHead)
        .collect();
    s.model.set_trainable_groups(&model_groups)?;
    narrow_trainable(&mut s.model, &t.trainable_prefixes)
        .map_err(|e| anyhow::anyhow!("stages[{i}] ({}): {e:#}", stage.name))?;
    if let Some(vh) = s.value_head.as_mut() {
        let on = groups.contains(&ParamGroup::ValueHead);
        let mut result = Ok(());
        vh.visit_mut("value_head.", &mut |name, p| {
            if let Err(e) = p.set_trainable(on) {
                result = Err(e.context(format!("parameter {name}")));
            }
        });
        result?;
    }
    s.optimizer = optimizer_for(
        &t,
        crate::kernels::Kernels::from_flag(s.cfg.runtime.fused_kernels),
    );
    s.groups = groups;
    s.stage = Some(i);
    s.stage_start = start;
    Ok(describe(s))
}

/// Whether optimizer step `step` is the first of a stage after the first (the optimiser state saved at
/// that step belongs to the stage before).
pub fn at_stage_start(s: &Session, step: u64) -> bool {
    s.stage.is_some_and(|i| i > 0) && step == s.stage_start
}

/// A line naming the session's current stage: its index, name, steps, lr and trainable count.
pub fn describe(s: &Session) -> Option<String> {
    let i = s.stage?;
    let stage = &s.cfg.stages[i];
    let (_, trainable) = s.model.param_counts();
    Some(format!(
        "stage {}/{} `{}`: steps {}–{}, lr {}, {} trainable parameters",
        i + 1,
        s.cfg.stages.len(),
        stage.name,
        s.stage_start + 1,
        s.stage_start + stage.steps,
        stage.training(&s.cfg.training).lr,
        trainable
    ))
}
