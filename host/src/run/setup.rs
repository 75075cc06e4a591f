//! What `wmtp run` does before its first step: the rank environment (launched runs), the session (fresh
//! or resumed), the sharding, and the run directory.

use super::RunOptions;
use crate::checkpoint::{self, TrainerState, CHECKPOINT_FORMAT};
use crate::train::config::RunConfig;
use crate::train::session::Session;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// A session ready to train, and where it stands.
pub struct Started {
    /// The session (sharded when launched).
    pub session: Session,
    /// Step, data position, best validation, plugin identity.
    pub state: TrainerState,
    /// The checkpoint resumed from, if any.
    pub resumed: Option<PathBuf>,
    /// This process's rank (0 alone).
    pub rank: usize,
    /// Print nothing but errors (asked for, or a rank other than 0).
    pub quiet: bool,
}

/// Builds the session of `opts`: under `wmtp launch` (RANK/WORLD_SIZE or Slurm's variables) every rank
/// builds the same one on its own GPU (cuda:LOCAL_RANK), joins the process group and shards the policy.
pub fn start(opts: &RunOptions) -> Result<Started> {
    let dist = crate::parallel::launch::RankEnv::from_env()?;
    let mut set = opts.set.clone();
    if let Some(d) = &dist {
        // every rank on its own GPU of the node; a CPU run stays on the CPU
        let device = match &opts.resume {
            Some(path) => {
                let ckpt = super::resume::checkpoint_to_resume(path)?;
                checkpoint::read_meta(&ckpt, &set)?.0.model.device
            }
            None => RunConfig::load(opts.config.as_deref(), &set)?.model.device,
        };
        if let crate::model::DeviceSpec::Cuda(_) = device {
            set.push(format!("model.device=\"cuda:{}\"", d.local_rank));
        }
    }
    let place = dist.as_ref().map(|d| (d.world_size, d.rank));
    let (mut session, state, resumed) = match &opts.resume {
        Some(path) => {
            let (s, st, ckpt) = super::resume::resume_session(
                path,
                &set,
                opts.pipeline.as_deref(),
                opts.allow_plugin_change,
                place,
            )?;
            (s, st, Some(ckpt))
        }
        None => fresh(opts, &set, place)?,
    };
    let rank = match &dist {
        Some(d) => {
            let comm = d.connect(&session.device)?;
            session.shard(comm)?;
            d.rank
        }
        None => 0,
    };
    Ok(Started {
        session,
        state,
        resumed,
        rank,
        quiet: opts.quiet || rank != 0,
    })
}

/// A new session from the config and the plugin, at step 0.
fn fresh(
    opts: &RunOptions,
    set: &[String],
    shard_place: Option<(usize, usize)>,
) -> Result<(Session, TrainerState, Option<PathBuf>)> {
    let pipeline = opts
        .pipeline
        .clone()
        .context("--pipeline is required (a .wasm plugin)")?;
    let cfg = RunConfig::load(opts.config.as_deref(), set)?;
    // a sharded run builds its policy in host memory: only the shards reach the device
    let s = Session::new_for(cfg, &pipeline, shard_place)?;
    let identity = super::resume::plugin_identity(&pipeline)?;
    let (pipeline, pipeline_sha256) = super::resume::compiled_identity(&s, identity)?;
    let st = TrainerState {
        format: CHECKPOINT_FORMAT,
        step: 0,
        epoch: 0,
        index: 0,
        best_val: None,
        pipeline,
        pipeline_sha256,
    };
    Ok((s, st, None))
}

/// The run directory: `checkpoint.dir`, else the resumed checkpoint's run, else
/// `runs/<pipeline>-<seconds>` (rank 0's clock for every rank).
pub fn run_dir(s: &Session, resumed: Option<&Path>) -> Result<PathBuf> {
    Ok(match (resumed, s.cfg.checkpoint.dir.is_empty()) {
        (Some(ckpt), true) => ckpt
            .parent()
            .and_then(|p| p.parent())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("runs")),
        (_, false) => PathBuf::from(&s.cfg.checkpoint.dir),
        (None, true) => {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            // every rank names the folder by rank 0's clock (the sum of rank 0's time and zeros)
            let mine = if s.strategy.rank() == 0 {
                secs as f64
            } else {
                0.0
            };
            let secs = s.strategy.sum_over_ranks(&[mine])?[0] as u64;
            PathBuf::from("runs").join(format!("{}-{secs}", pipeline_name(&s.pipeline_path)))
        }
    })
}

/// Rank 0 creates the run directory, cleans up after an interrupted save, and writes the resolved config.
pub fn prepare_run_dir(run_dir: &Path, s: &Session, rank: usize) -> Result<()> {
    if rank != 0 {
        return Ok(());
    }
    std::fs::create_dir_all(run_dir)
        .with_context(|| format!("creating run directory {}", run_dir.display()))?;
    for p in checkpoint::clean_leftovers(run_dir)? {
        tracing::warn!(
            "cleaned up after an interrupted checkpoint save: {}",
            p.display()
        );
    }
    std::fs::write(run_dir.join(checkpoint::layout::CONFIG), s.cfg.to_toml()?)?;
    Ok(())
}

fn pipeline_name(p: &Path) -> String {
    p.file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("run")
        .to_string()
}
