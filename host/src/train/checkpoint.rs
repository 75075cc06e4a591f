//! Checkpoints: everything needed to continue a run exactly — the trained weights (the LoRA adapter in
//! PEFT layout with the value head, or the full model), the AdamW moments, the plugin's state, the data
//! position, the step, and the resolved config. A checkpoint is written into a temporary folder and
//! renamed into place, so a crash never leaves a half-written one (and never damages the previous one).

use super::config::RunConfig;
use super::session::Session;
use crate::model::adapter::{save_adapter, save_full};
use crate::model::param::restore_params;
use crate::model::ParamGroup;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Version of the checkpoint layout.
pub const CHECKPOINT_FORMAT: u32 = 1;

/// `trainer_state.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    /// Layout version.
    pub format: u32,
    /// Optimizer steps done.
    pub step: u64,
    /// Data position: epoch of the next batch.
    pub epoch: u64,
    /// Data position: index of the next batch's first item.
    pub index: usize,
    /// Best validation loss so far.
    pub best_val: Option<f64>,
    /// The pipeline plugin the run used.
    pub pipeline: String,
}

/// Writes checkpoint `name` of the session into `run_dir/checkpoints/name`; returns its path.
pub fn save(run_dir: &Path, name: &str, s: &mut Session, st: &TrainerState) -> Result<PathBuf> {
    let root = run_dir.join("checkpoints");
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let tmp = root.join(format!(".{name}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    write_contents(&tmp, s, st).with_context(|| format!("writing checkpoint {}", tmp.display()))?;
    let dst = root.join(name);
    let old = root.join(format!(".{name}.old"));
    let _ = std::fs::remove_dir_all(&old);
    if dst.exists() {
        std::fs::rename(&dst, &old)?;
    }
    std::fs::rename(&tmp, &dst)
        .with_context(|| format!("moving the checkpoint into {}", dst.display()))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(dst)
}

fn write_contents(dir: &Path, s: &mut Session, st: &TrainerState) -> Result<()> {
    std::fs::write(dir.join("config.toml"), s.cfg.to_toml()?)?;
    std::fs::write(
        dir.join("trainer_state.json"),
        serde_json::to_string_pretty(st)?,
    )?;
    std::fs::write(dir.join("plugin_state.bin"), s.weigher.save_state()?)?;
    let (opt, _) = s.optimizer.state();
    let opt: HashMap<String, candle_core::Tensor> = opt.into_iter().collect();
    if !opt.is_empty() {
        candle_core::safetensors::save(&opt, dir.join("optimizer.safetensors"))?;
    }
    if s.model.lora.is_some() {
        save_adapter(
            &dir.join("adapter"),
            &s.model,
            s.value_head.as_ref(),
            &s.source,
        )?;
    } else {
        save_full(&dir.join("model"), &s.model, s.value_head.as_ref())?;
    }
    Ok(())
}

/// Reads a checkpoint's config and trainer state.
pub fn read_meta(ckpt: &Path) -> Result<(RunConfig, TrainerState)> {
    let cfg = RunConfig::load(Some(&ckpt.join("config.toml")), &[])
        .with_context(|| format!("checkpoint {}", ckpt.display()))?;
    let p = ckpt.join("trainer_state.json");
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    let st: TrainerState =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))?;
    if st.format > CHECKPOINT_FORMAT {
        bail!(
            "{}: checkpoint format {} is newer than this wmtp reads",
            p.display(),
            st.format
        );
    }
    Ok((cfg, st))
}

/// Loads a checkpoint's weights, optimiser, plugin state and data position into a session built from
/// the checkpoint's config.
pub fn load_into(ckpt: &Path, s: &mut Session, st: &TrainerState) -> Result<()> {
    let read = |p: &Path| crate::model::load::meta::read_safetensors(p);
    if s.model.lora.is_some() {
        let f = ckpt.join("adapter/adapter_model.safetensors");
        restore_params(
            &mut s.model,
            "",
            &[ParamGroup::Lora],
            &mut read(&f)?,
            &|n| format!("base_model.model.{n}"),
        )
        .with_context(|| format!("restoring from {}", f.display()))?;
    } else {
        let f = ckpt.join("model/model.safetensors");
        let groups = [ParamGroup::Trunk, ParamGroup::Heads];
        restore_params(&mut s.model, "", &groups, &mut read(&f)?, &|n| {
            n.to_string()
        })
        .with_context(|| format!("restoring from {}", f.display()))?;
    }
    if let Some(vh) = &mut s.value_head {
        let f = if s.model.lora.is_some() {
            ckpt.join("adapter/value_head.safetensors")
        } else {
            ckpt.join("model/value_head.safetensors")
        };
        let groups = [ParamGroup::ValueHead];
        restore_params(vh, "value_head.", &groups, &mut read(&f)?, &|n| {
            n.to_string()
        })
        .with_context(|| format!("restoring from {}", f.display()))?;
    }
    let f = ckpt.join("optimizer.safetensors");
    if f.exists() {
        let dev = s.model.device().clone();
        let t = read(&f)?
            .into_iter()
            .map(|(k, v)| Ok((k, v.to_device(&dev)?)))
            .collect::<Result<HashMap<_, _>>>()?;
        s.optimizer.load_state(t, st.step)?;
    } else {
        s.optimizer.load_state(HashMap::new(), st.step)?;
    }
    let f = ckpt.join("plugin_state.bin");
    let bytes = std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
    s.weigher.load_state(&bytes)?;
    s.batcher.seek(st.epoch, st.index);
    Ok(())
}
