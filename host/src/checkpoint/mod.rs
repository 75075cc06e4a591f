//! Checkpoints: everything needed to continue a run exactly — the trained weights (the LoRA adapter in
//! PEFT layout with the value head, or the full model), the AdamW moments, the plugin's state, the data
//! position, the step, the resolved config, and the plugin's identity (absolute path and SHA-256). A
//! checkpoint is written into a temporary folder, every file and the folder synced to disk, and renamed
//! into place, so a crash — `kill -9` or power loss — never leaves a half-written one under a real name
//! (and never damages the previous one); the next run's start cleans up what a crash left behind
//! ([`clean_leftovers`]). A checkpoint with a non-finite trainable parameter is never written.

pub mod evaluate;
pub mod export;
pub mod sharded;

use crate::formats::adapter::{save_adapter, save_full};
pub use crate::formats::checkpoint::{TrainerState, CHECKPOINT_FORMAT};
pub use crate::formats::checkpoint_layout as layout;
use crate::model::param::restore_params;
use crate::model::ParamGroup;
pub use crate::train::config_source::read_meta;
use crate::train::session::Session;
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Hex SHA-256 of the file at `path`.
pub fn file_sha256(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    crate::train::reference::hash_file(&mut h, path)?;
    Ok(format!("{:x}", h.finalize()))
}

/// Syncs every file under `dir` and `dir` itself to disk.
fn sync_tree(dir: &Path) -> Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            sync_tree(&p)?;
        } else {
            std::fs::File::open(&p)?.sync_all()?;
        }
    }
    sync_dir(dir)
}

/// Syncs a folder's entries (a rename into it) to disk; a no-op where folders cannot be opened.
fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    let _ = dir;
    Ok(())
}

/// Removes what an interrupted save left in `run_dir/checkpoints`: `.NAME.tmp` folders (a save that
/// never finished) and `.NAME.old` folders — put back as `NAME` when the crash came between moving the
/// old checkpoint aside and moving the new one in. Returns the folders it removed or restored.
pub fn clean_leftovers(run_dir: &Path) -> Result<Vec<PathBuf>> {
    let root = layout::checkpoints_dir(run_dir);
    let mut touched = Vec::new();
    let Ok(entries) = std::fs::read_dir(&root) else {
        return Ok(touched);
    };
    for e in entries {
        let p = e?.path();
        let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if let Some(real) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".old")) {
            let dst = root.join(real);
            if !dst.exists() {
                std::fs::rename(&p, &dst)
                    .with_context(|| format!("restoring {}", dst.display()))?;
                touched.push(dst);
                continue;
            }
        } else if !(name.starts_with('.') && name.ends_with(".tmp")) {
            continue;
        }
        std::fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
        touched.push(p);
    }
    Ok(touched)
}

/// The latest complete `step-N` checkpoint in `run_dir/checkpoints`, if any.
pub fn latest(run_dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(layout::checkpoints_dir(run_dir))
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n: u64 = e
                .file_name()
                .to_str()?
                .strip_prefix("step-")?
                .parse()
                .ok()?;
            e.path()
                .join(layout::TRAINER_STATE)
                .exists()
                .then(|| (n, e.path()))
        })
        .max_by_key(|(n, _)| *n)
        .map(|(_, p)| p)
}

/// Writes checkpoint `name` of the session into `run_dir/checkpoints/name`; returns its path.
///
/// A sharded session (FSDP) saves the same full checkpoint: every rank gathers the trained weights and
/// the optimiser state (collectives) unit by unit into rank 0's host memory, rank 0 writes, and the
/// ranks agree on the outcome, so a failed save fails on every rank. Such a checkpoint resumes on any world size ([`crate::train::session::Session::shard`]
/// cuts the state to the new shards).
pub fn save(run_dir: &Path, name: &str, s: &mut Session, st: &TrainerState) -> Result<PathBuf> {
    if s.strategy.sharded() && s.cfg.checkpoint.sharded {
        return sharded::save(run_dir, name, s, st);
    }
    let (model, opt) = s.strategy.gather_for_saving(
        &s.model,
        s.optimizer.state().0,
        s.optimizer.sharded_slots(),
    )?;
    let written = if s.strategy.rank() == 0 {
        save_model(run_dir, name, s, st, &model, opt)
    } else {
        Ok(layout::checkpoints_dir(run_dir).join(name))
    };
    let failed = s
        .strategy
        .sum_over_ranks(&[written.is_err() as u8 as f64])?[0];
    if written.is_ok() && failed > 0.0 {
        bail!("checkpoint {name}: rank 0 could not write it");
    }
    written
}

/// [`save`] of `model` (the session's, or its gathered copy) with optimiser state `opt`.
fn save_model(
    run_dir: &Path,
    name: &str,
    s: &mut Session,
    st: &TrainerState,
    model: &crate::model::Transformer,
    opt: HashMap<String, candle_core::Tensor>,
) -> Result<PathBuf> {
    let root = layout::checkpoints_dir(run_dir);
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let label = format!("checkpoint {name} (pipeline {})", s.pipeline_path.display());
    crate::train::guard::check_finite(model, "", &label)?;
    if let Some(vh) = &s.value_head {
        crate::train::guard::check_finite(vh, "value_head.", &label)?;
    }
    let tmp = root.join(format!(".{name}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let written = write_contents(&tmp, s, st, model, opt);
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp); // a failed save leaves nothing behind
        return Err(e.context(format!("writing checkpoint {}", tmp.display())));
    }
    commit(&root, &tmp, name)
}

/// Moves the finished `tmp` folder in as checkpoint `name` of `root` (the previous one set aside, then
/// removed: a crash leaves either, [`clean_leftovers`] sorts it out).
pub(crate) fn commit(root: &Path, tmp: &Path, name: &str) -> Result<PathBuf> {
    sync_tree(tmp)?;
    let dst = root.join(name);
    let old = root.join(format!(".{name}.old"));
    let _ = std::fs::remove_dir_all(&old);
    if dst.exists() {
        std::fs::rename(&dst, &old)?;
    }
    std::fs::rename(tmp, &dst)
        .with_context(|| format!("moving the checkpoint into {}", dst.display()))?;
    sync_dir(root)?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(dst)
}

/// What every checkpoint holds besides weights: the config, the trainer state, the plugin's state.
pub(crate) fn write_run_state(dir: &Path, s: &mut Session, st: &TrainerState) -> Result<()> {
    std::fs::write(dir.join(layout::CONFIG), s.cfg.to_toml()?)?;
    std::fs::write(
        dir.join(layout::TRAINER_STATE),
        serde_json::to_string_pretty(st)?,
    )?;
    std::fs::write(dir.join(layout::PLUGIN_STATE), s.weigher.save_state()?)?;
    Ok(())
}

fn write_contents(
    dir: &Path,
    s: &mut Session,
    st: &TrainerState,
    model: &crate::model::Transformer,
    opt: HashMap<String, candle_core::Tensor>,
) -> Result<()> {
    write_run_state(dir, s, st)?;
    if !opt.is_empty() {
        crate::formats::adapter::save_tensors(
            &dir.join(layout::OPTIMIZER),
            opt.into_iter().collect(),
        )?;
    }
    if model.lora.is_some() {
        save_adapter(
            &dir.join(layout::ADAPTER),
            model,
            s.value_head.as_ref(),
            &s.source,
        )?;
    } else {
        save_full(&dir.join(layout::MODEL), model, s.value_head.as_ref())?;
    }
    Ok(())
}

/// Loads a checkpoint's weights, optimiser, plugin state and data position into a session built from
/// the checkpoint's config (before it is sharded: [`crate::train::session::Session::shard`] after).
pub fn load_into(ckpt: &Path, s: &mut Session, st: &TrainerState) -> Result<()> {
    if s.strategy.sharded() {
        bail!("load the checkpoint before sharding the session");
    }
    if ckpt.join(layout::SHARD_INDEX).exists() {
        return sharded::load_into(ckpt, s, st);
    }
    load_model_weights(ckpt, s)?;
    let read = |p: &Path| crate::formats::meta::read_safetensors(p);
    if let Some(vh) = &mut s.value_head {
        let f = if s.model.lora.is_some() {
            ckpt.join(layout::ADAPTER).join("value_head.safetensors")
        } else {
            ckpt.join(layout::MODEL).join("value_head.safetensors")
        };
        let groups = [ParamGroup::ValueHead];
        restore_params(vh, "value_head.", &groups, &mut read(&f)?, &|n| {
            n.to_string()
        })
        .with_context(|| format!("restoring from {}", f.display()))?;
    }
    // with [[stages]]: the checkpoint's stage (its trained parameters, a fresh optimiser), whose
    // optimiser counts steps from the stage's start; at a stage's first step the saved state is the
    // previous stage's, and the new stage starts afresh as in an uninterrupted run
    crate::train::stage_switch::enter_stage(s, st.step)?;
    let local_step = st.step - s.stage_start;
    let f = ckpt.join(layout::OPTIMIZER);
    if f.exists() && !crate::train::stage_switch::at_stage_start(s, st.step) {
        let dev = s.model.device().clone();
        let t = read(&f)?
            .into_iter()
            .map(|(k, v)| Ok((k, v.to_device(&dev)?)))
            .collect::<Result<HashMap<_, _>>>()?;
        s.optimizer.load_state(t, local_step)?;
    } else {
        s.optimizer.load_state(HashMap::new(), local_step)?;
    }
    load_plugin_and_position(ckpt, s, st)
}

/// Loads only a checkpoint's model weights (the adapter, or the full model) into `s` (a session of the
/// same model): `load_into`'s first part, and all of it when another pipeline evaluates the model.
pub fn load_model_weights(ckpt: &Path, s: &mut Session) -> Result<()> {
    if ckpt.join(layout::SHARD_INDEX).exists() {
        bail!(
            "{}: a sharded checkpoint is loaded whole (load_into), not weights only",
            ckpt.display()
        );
    }
    let read = |p: &Path| crate::formats::meta::read_safetensors(p);
    if s.model.lora.is_some() {
        let f = ckpt.join(layout::ADAPTER).join("adapter_model.safetensors");
        restore_params(
            &mut s.model,
            "",
            &[ParamGroup::Lora],
            &mut read(&f)?,
            &|n| format!("base_model.model.{n}"),
        )
        .with_context(|| format!("restoring from {}", f.display()))?;
        crate::formats::adapter::load_trained_base_weights(
            &ckpt.join(layout::ADAPTER),
            &mut s.model,
        )?;
    } else {
        let f = ckpt.join(layout::MODEL).join("model.safetensors");
        let groups = [ParamGroup::Trunk, ParamGroup::Heads];
        restore_params(&mut s.model, "", &groups, &mut read(&f)?, &|n| {
            n.to_string()
        })
        .with_context(|| format!("restoring from {}", f.display()))?;
    }
    Ok(())
}

/// The last part of every load: the plugin's state and the data position.
pub(crate) fn load_plugin_and_position(
    ckpt: &Path,
    s: &mut Session,
    st: &TrainerState,
) -> Result<()> {
    let f = ckpt.join(layout::PLUGIN_STATE);
    // the size first: a state file over the plugin's cap is refused without reading it into memory
    let cap = wmtp_plugin_host::PluginLimits::default().state_bytes;
    let len = std::fs::metadata(&f)
        .with_context(|| format!("reading {}", f.display()))?
        .len();
    if len > cap as u64 {
        bail!(
            "{}: {} MiB of plugin state; a plugin's state is at most {} MiB",
            f.display(),
            len >> 20,
            cap >> 20
        );
    }
    let bytes = std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
    s.weigher.load_state(&bytes)?;
    s.batcher.seek(st.epoch, st.index);
    Ok(())
}
