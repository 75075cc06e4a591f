//! `wmtp run`: a training run from a config (or the embedded default) and a pipeline plugin, read top
//! down — set up (run/setup.rs: ranks, session, run directory), say what will run
//! (run/console.rs), loop over [`crate::train::session_step::train_step`] with its bookkeeping (run/train_loop.rs:
//! metrics, validation and `best`, checkpoints, Ctrl-C, progress), finish (final validation, last
//! checkpoint, summary). Resume is exact.

pub mod console;
pub mod metrics_log;
pub mod plot;
pub mod progress;
pub mod resume;
pub mod setup;
pub mod tensorboard;
pub mod train_loop;

use self::train_loop::TrainLoop;
use crate::train::evaluate::Validation;
use anyhow::Result;
use std::path::PathBuf;
use std::time::Instant;

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// The run directory.
    pub run_dir: PathBuf,
    /// Pipeline loss per step.
    pub losses: Vec<f64>,
    /// Unweighted CE per step.
    pub ces: Vec<f64>,
    /// Final validation (plain CE, pipeline loss), if there is validation data.
    pub val: Option<Validation>,
    /// The last checkpoint written.
    pub last_checkpoint: PathBuf,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Stopped by Ctrl-C (SIGINT) before `training.steps`: a checkpoint was saved at the step reached,
    /// and no final validation ran. The command exits 130 then.
    pub interrupted: bool,
}

/// Options of one run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The pipeline plugin (.wasm); None on resume = the checkpoint's.
    pub pipeline: Option<PathBuf>,
    /// Config file; None = the embedded default.
    pub config: Option<PathBuf>,
    /// `--set key=value` overrides.
    pub set: Vec<String>,
    /// Continue from this checkpoint directory (or run directory: its latest checkpoint).
    pub resume: Option<PathBuf>,
    /// On resume, accept a plugin whose bytes differ from the checkpoint's.
    pub allow_plugin_change: bool,
    /// Print nothing but errors.
    pub quiet: bool,
}

/// Runs training; see the module doc.
///
/// Under `wmtp launch` (or torchrun / Slurm: RANK and WORLD_SIZE, or SLURM_PROCID and SLURM_NTASKS, in
/// the environment; one rank included) the run is sharded: every rank builds the same session, joins
/// the process group and shards the policy (FSDP); a CUDA device becomes cuda:LOCAL_RANK. Rank 0 alone
/// prints, writes the run directory's files and checkpoints; the other ranks compute and take part in
/// the collectives.
pub fn run(opts: &RunOptions) -> Result<RunSummary> {
    let started = Instant::now();
    let self::setup::Started {
        session: mut s,
        mut state,
        resumed,
        rank,
        quiet,
    } = self::setup::start(opts)?;
    let run_dir = self::setup::run_dir(&s, resumed.as_deref())?;
    self::setup::prepare_run_dir(&run_dir, &s, rank)?;
    let resumed_at = resumed.is_some().then_some(state.step);
    let total = s.cfg.training.steps;
    if !quiet {
        self::console::print_start(&s, &run_dir, resumed_at);
        if let Some(ckpt) = &resumed {
            self::console::note_changed_steps(ckpt, total);
        }
    }
    if let (Some(ckpt), Some(at)) = (&resumed, resumed_at) {
        if at >= total {
            if !quiet {
                self::console::nothing_left(at, total);
            }
            return Ok(RunSummary {
                run_dir,
                losses: vec![],
                ces: vec![],
                val: None,
                last_checkpoint: ckpt.clone(),
                seconds: started.elapsed().as_secs_f64(),
                interrupted: false,
            });
        }
    }
    let mut lp = TrainLoop::new(&s, &state, &run_dir, rank, quiet, started, resumed_at)?;
    lp.begin(&mut s, &state)?;
    let mut interrupted = false;
    while state.step < total {
        if !lp.step(&mut s, &mut state)? {
            interrupted = true;
            break;
        }
    }
    lp.finish(s, state, interrupted)
}
