//! Staged training (`[[stages]]` in a run config): one run made of consecutive stages, each with its own
//! trained groups, parameter-name prefixes, learning rate and schedule, e.g. the extra heads alone with the
//! trunk frozen, then everything:
//!
//! ```toml
//! [[stages]]
//! name = "heads"
//! steps = 50
//! trainable_prefixes = ["extra_heads."]
//! lr = 1e-3
//!
//! [[stages]]
//! name = "joint"
//! steps = 50
//! ```
//!
//! A key a stage leaves out takes the `[training]` value. The run's length is the sum of the stages' steps
//! (`training.steps` is set to it). At a stage's first step the trained parameters change and the
//! optimiser starts afresh (new moments, the stage's warm-up and cosine over the stage's steps); weights
//! carry over. A checkpoint's step says which stage it is in, so a resume mid-stage rebuilds that stage
//! and restores the optimiser within it. Metrics carry `stage` (1-based) and the console names each
//! stage as it starts. `training.use_lora` is the run's (adapters are added when any stage trains them).
//! Not yet: sharded (launched) runs, and per-stage plugin settings.

use super::config::{RunConfig, TrainingSection};
use super::session::{optimizer_for, Session};
use super::trainable::{narrow_trainable, trained_groups};
use crate::model::{ParamGroup, VisitParams};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

/// One `[[stages]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSection {
    /// A name for logs (default `stage-N`, 1-based).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Optimizer steps of this stage (≥ 1).
    pub steps: u64,
    /// Trained groups (default: `training.trainable`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trainable: Option<Vec<ParamGroup>>,
    /// Parameter-name prefixes narrowing them (default: `training.trainable_prefixes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trainable_prefixes: Option<Vec<String>>,
    /// Peak learning rate (default: `training.lr`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// Warm-up share of the stage's steps (default: `training.warmup_ratio`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_ratio: Option<f64>,
    /// Final lr / peak lr of the stage (default: `training.min_lr_ratio`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_lr_ratio: Option<f64>,
}

impl StageSection {
    /// The `[training]` section this stage trains with: its own keys over the run's, `steps` the stage's.
    pub fn training(&self, base: &TrainingSection) -> TrainingSection {
        let mut t = base.clone();
        t.steps = self.steps;
        if let Some(g) = &self.trainable {
            t.trainable = g.clone();
        }
        if let Some(p) = &self.trainable_prefixes {
            t.trainable_prefixes = p.clone();
        }
        t.lr = self.lr.unwrap_or(t.lr);
        t.warmup_ratio = self.warmup_ratio.unwrap_or(t.warmup_ratio);
        t.min_lr_ratio = self.min_lr_ratio.unwrap_or(t.min_lr_ratio);
        t
    }
}

/// Checks the stages (errors name `stages[i].key`) and sets `training.steps` to their sum.
pub fn resolve(cfg: &mut RunConfig) -> Result<()> {
    for (i, st) in cfg.stages.iter_mut().enumerate() {
        let at = |k: &str| format!("stages[{i}].{k}");
        if st.steps == 0 {
            bail!("{} must be ≥ 1", at("steps"));
        }
        if let Some(lr) = st.lr {
            if !(lr > 0.0 && lr.is_finite()) {
                bail!("{} must be > 0", at("lr"));
            }
        }
        for (k, v) in [
            ("warmup_ratio", st.warmup_ratio),
            ("min_lr_ratio", st.min_lr_ratio),
        ] {
            if v.is_some_and(|x| !(0.0..=1.0).contains(&x)) {
                bail!("{} must be in [0, 1]", at(k));
            }
        }
        if st.name.is_empty() {
            st.name = format!("stage-{}", i + 1);
        }
    }
    if !cfg.stages.is_empty() {
        cfg.training.steps = cfg.stages.iter().map(|s| s.steps).sum();
    }
    Ok(())
}

/// (index, first global step) of the stage that optimizer step `step` (0-based) belongs to; the last
/// stage for steps past the end.
pub fn stage_at(stages: &[StageSection], step: u64) -> (usize, u64) {
    let mut start = 0;
    for (i, s) in stages.iter().enumerate() {
        if step < start + s.steps || i + 1 == stages.len() {
            return (i, start);
        }
        start += s.steps;
    }
    (0, 0)
}

/// Whether any stage (or the run itself, without stages) trains LoRA adapters.
pub fn any_stage_trains_lora(cfg: &RunConfig, manifest: &wmtp_plugin_host::Manifest) -> bool {
    let lora = |t: &TrainingSection| trained_groups(t, manifest).contains(&ParamGroup::Lora);
    if cfg.stages.is_empty() {
        return lora(&cfg.training);
    }
    cfg.stages.iter().any(|s| lora(&s.training(&cfg.training)))
}

/// The `[training]` section step 0 trains with: the first stage's, or the run's without stages.
pub fn first_training(cfg: &RunConfig) -> TrainingSection {
    match cfg.stages.first() {
        Some(st) => st.training(&cfg.training),
        None => cfg.training.clone(),
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_at_finds_the_stage_and_its_first_step() {
        let st = |steps| StageSection {
            name: String::new(),
            steps,
            trainable: None,
            trainable_prefixes: None,
            lr: None,
            warmup_ratio: None,
            min_lr_ratio: None,
        };
        let stages = [st(3), st(2)];
        let got: Vec<(usize, u64)> = (0..6).map(|s| stage_at(&stages, s)).collect();
        assert_eq!(got, [(0, 0), (0, 0), (0, 0), (1, 3), (1, 3), (1, 3)]);
    }
}
