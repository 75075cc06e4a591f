//! Per-rank checkpoints of a sharded run (`checkpoint.sharded = true`): nothing is gathered; every rank
//! writes its trainable slices and their AdamW moments to `shards/rank-NNNNN.safetensors`, and rank 0
//! writes `shards/index.json` (how the slices split into tensors), the config, the trainer and plugin
//! state, the replicated value head and its optimiser state. Frozen weights are not saved: they come
//! from the base model, as for LoRA adapters. Loading reads every file, rebuilds each tensor, and the
//! session is then sharded afresh, so the checkpoint resumes on any number of ranks (one included).
//!
//! The folder appears at once or not at all (`.NAME.tmp`, then a rename, as full checkpoints), and the
//! ranks agree on the outcome: a rank that fails to write fails the save on every rank. The checkpoint
//! folder must be on a filesystem every rank sees.

use super::layout;
use super::{commit, load_plugin_and_position, write_run_state, TrainerState};
use crate::model::param::restore_params;
use crate::model::{ParamGroup, VisitParams};
use crate::parallel::fsdp::state::unshard_files;
use crate::parallel::shard::ShardIndex;
use crate::parallel::strategy::Strategy;
use crate::train::session::Session;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Every rank learns whether every rank's `r` succeeded: this rank's error, or an error naming the
/// rank count that failed elsewhere.
fn agree<T>(strategy: &dyn Strategy, r: Result<T>, what: &str) -> Result<T> {
    let failed = strategy.sum_over_ranks(&[r.is_err() as u8 as f64])?[0];
    match r {
        Err(e) => Err(e.context(format!("{what} (rank {})", strategy.rank()))),
        Ok(_) if failed > 0.0 => bail!("{what}: {failed} other rank(s) failed"),
        Ok(v) => Ok(v),
    }
}

/// Writes checkpoint `name` of a sharded session as per-rank files; every rank calls it.
pub fn save(run_dir: &Path, name: &str, s: &mut Session, st: &TrainerState) -> Result<PathBuf> {
    let rank = s.strategy.rank();
    let root = layout::checkpoints_dir(run_dir);
    let tmp = root.join(format!(".{name}.tmp"));
    let label = format!("checkpoint {name} (pipeline {})", s.pipeline_path.display());
    let prepared = if rank == 0 {
        (|| -> Result<()> {
            std::fs::create_dir_all(&root)
                .with_context(|| format!("creating {}", root.display()))?;
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::create_dir_all(tmp.join(layout::SHARDS))
                .with_context(|| format!("creating {}", tmp.display()))?;
            Ok(())
        })()
    } else {
        Ok(())
    };
    agree(
        s.strategy.as_ref(),
        prepared,
        "preparing the checkpoint folder",
    )?;
    let (state, _) = s.optimizer.state();
    let part = s.strategy.rank_part(&state, s.optimizer.sharded_slots())?;
    let index = part.index;
    let written = (|| -> Result<()> {
        if let Some(p) = s.strategy.owned_params() {
            crate::train::guard::check_finite(p, "", &label)?;
        }
        if let Some(t) = part.tensors {
            let p = tmp.join(layout::rank_file(rank));
            crate::formats::adapter::save_tensors(&p, t.into_iter().collect())
                .with_context(|| format!("writing {}", p.display()))?;
        }
        Ok(())
    })();
    let written = agree(s.strategy.as_ref(), written, "writing the shards");
    if written.is_err() && rank == 0 {
        let _ = std::fs::remove_dir_all(&tmp); // a failed save leaves nothing behind
    }
    written?;
    let done = if rank == 0 {
        write_rest(&tmp, s, st, &index, &state)
            .and_then(|()| commit(&root, &tmp, name))
            .inspect_err(|_| {
                let _ = std::fs::remove_dir_all(&tmp);
            })
    } else {
        Ok(root.join(name))
    };
    agree(s.strategy.as_ref(), done, "finishing the checkpoint")
}

/// Rank 0's part: index, config, trainer and plugin state, value head, the replicated optimiser state.
fn write_rest(
    dir: &Path,
    s: &mut Session,
    st: &TrainerState,
    index: &ShardIndex,
    state: &HashMap<String, Tensor>,
) -> Result<()> {
    std::fs::write(
        dir.join(layout::SHARD_INDEX),
        serde_json::to_string_pretty(index)?,
    )?;
    write_run_state(dir, s, st)?;
    let rest: HashMap<String, Tensor> = state
        .iter()
        .filter(|(k, _)| !k.contains("fsdp."))
        .map(|(k, t)| (k.clone(), t.clone()))
        .collect();
    if !rest.is_empty() {
        crate::formats::adapter::save_tensors(
            &dir.join(layout::OPTIMIZER),
            rest.into_iter().collect(),
        )?;
    }
    if let Some(vh) = &s.value_head {
        let mut t = HashMap::new();
        vh.visit("value_head.", &mut |n, p| {
            t.insert(n.to_string(), p.tensor().clone());
        });
        crate::formats::adapter::save_tensors(
            &dir.join("value_head.safetensors"),
            t.into_iter().collect(),
        )?;
    }
    Ok(())
}

/// Loads a per-rank checkpoint into an unsharded session built from its config (shard it afterwards,
/// on any number of ranks).
pub fn load_into(ckpt: &Path, s: &mut Session, st: &TrainerState) -> Result<()> {
    let read = |p: &Path| crate::formats::meta::read_safetensors(p);
    let p = ckpt.join(layout::SHARD_INDEX);
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    let index: ShardIndex =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))?;
    let files = (0..index.slices)
        .map(|r| read(&ckpt.join(layout::rank_file(r))))
        .collect::<Result<Vec<_>>>()?;
    let (weights, mut state) = unshard_files(&index, &files, s.optimizer.sharded_slots())
        .with_context(|| format!("checkpoint {}", ckpt.display()))?;
    let narrow = s.model.dtype() != DType::F32;
    let mut left: HashMap<String, Tensor> = weights;
    let mut err = None;
    s.model.visit_mut("", &mut |name, p| {
        let Some(t) = left.remove(name) else { return };
        if !p.is_trainable() {
            err.get_or_insert(anyhow::anyhow!(
                "`{name}` is trained in the checkpoint but frozen in this run"
            ));
            return;
        }
        if narrow {
            state.insert(format!("master.{name}"), t.clone());
        }
        let r = t
            .to_device(p.tensor().device())
            .and_then(|t| t.to_dtype(p.tensor().dtype()))
            .map_err(anyhow::Error::from)
            .and_then(|t| p.set_value(t));
        if let Err(e) = r {
            err.get_or_insert(e.context(format!("tensor `{name}`")));
        }
    });
    if let Some(e) = err {
        return Err(e.context(format!("restoring from {}", ckpt.display())));
    }
    if let Some(n) = left.keys().next() {
        bail!("{}: `{n}` is not a parameter of this model", ckpt.display());
    }
    if let Some(vh) = &mut s.value_head {
        let f = ckpt.join("value_head.safetensors");
        restore_params(
            vh,
            "value_head.",
            &[ParamGroup::ValueHead],
            &mut read(&f)?,
            &|n| n.to_string(),
        )
        .with_context(|| format!("restoring from {}", f.display()))?;
    }
    let f = ckpt.join(layout::OPTIMIZER);
    if f.exists() {
        state.extend(read(&f)?);
    }
    let dev = s.model.device().clone();
    let state = state
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_device(&dev)?)))
        .collect::<Result<HashMap<_, _>>>()?;
    crate::train::stage_switch::enter_stage(s, st.step)?;
    if !crate::train::stage_switch::at_stage_start(s, st.step) {
        s.optimizer.load_state(state, st.step - s.stage_start)?;
    }
    load_plugin_and_position(ckpt, s, st)
}
