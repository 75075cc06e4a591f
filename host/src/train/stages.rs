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

use super::config::{RunConfig, StageSection, TrainingSection};
use super::trainable::trained_groups;
use crate::model::ParamGroup;
use anyhow::{bail, Result};

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
