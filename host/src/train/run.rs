//! `wmtp run`: a training run from a config (or the embedded default) and a pipeline plugin — start-up
//! summary, progress (a bar, or plain lines off a terminal: train/progress.rs), metrics JSONL, validation, checkpoints (periodic, best, final; Ctrl-C saves
//! one and exits), exact resume, and an end summary.

use super::checkpoint::{self, TrainerState, CHECKPOINT_FORMAT};
use super::config::RunConfig;
use super::evaluate::Validation;
use super::progress::{Progress, StepFigures};
use super::session::Session;
use super::step::train_step;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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

fn pipeline_name(p: &Path) -> String {
    p.file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("run")
        .to_string()
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
    let dist = crate::dist::launch::RankEnv::from_env()?;
    let mut set = opts.set.clone();
    let mut opts = opts.clone();
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
        opts.quiet |= d.rank != 0;
    }
    let opts = &opts;
    let (mut s, mut state, resumed) = match &opts.resume {
        Some(path) => {
            let (s, st, ckpt) = super::resume::resume_session(
                path,
                &set,
                opts.pipeline.as_deref(),
                opts.allow_plugin_change,
                dist.is_some(),
            )?;
            (s, st, Some(ckpt))
        }
        None => {
            let pipeline = opts
                .pipeline
                .clone()
                .context("--pipeline is required (a .wasm plugin)")?;
            let cfg = RunConfig::load(opts.config.as_deref(), &set)?;
            // a sharded run builds its policy in host memory: only the shards reach the device
            let s = Session::new_for(cfg, &pipeline, dist.is_some())?;
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
            (s, st, None)
        }
    };
    let rank = match &dist {
        Some(d) => {
            let comm = d.connect(&s.device)?;
            s.shard(comm)?;
            d.rank
        }
        None => 0,
    };
    let run_dir = match (&resumed, s.cfg.checkpoint.dir.is_empty()) {
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
            // one name for the whole job: rank 0's clock
            let secs = match &s.fsdp {
                Some(f) => f
                    .comm()
                    .broadcast(
                        &candle_core::Tensor::new(&[secs as f64], &candle_core::Device::Cpu)?,
                        0,
                    )?
                    .to_vec1::<f64>()?[0] as u64,
                None => secs,
            };
            PathBuf::from("runs").join(format!("{}-{secs}", pipeline_name(&s.pipeline_path)))
        }
    };
    let resumed_at = resumed.is_some().then_some(state.step);
    if rank == 0 {
        std::fs::create_dir_all(&run_dir)
            .with_context(|| format!("creating run directory {}", run_dir.display()))?;
        for p in checkpoint::clean_leftovers(&run_dir)? {
            tracing::warn!(
                "cleaned up after an interrupted checkpoint save: {}",
                p.display()
            );
        }
        std::fs::write(run_dir.join(checkpoint::layout::CONFIG), s.cfg.to_toml()?)?;
    }
    if !opts.quiet {
        super::console::print_start(&s, &run_dir, resumed_at);
        if let Some(ckpt) = &resumed {
            super::console::note_changed_steps(ckpt, s.cfg.training.steps);
        }
    }
    if let (Some(ckpt), Some(at)) = (&resumed, resumed_at) {
        if at >= s.cfg.training.steps {
            if !opts.quiet {
                super::console::nothing_left(at, s.cfg.training.steps);
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

    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
    }
    // rank 0 writes the metrics; the others' lines (the same global figures) go nowhere
    let mut metrics =
        super::metrics_log::MetricsLog::open(&run_dir, rank, s.cfg.runtime.tensorboard)?;
    let total = s.cfg.training.steps;
    let rt = &s.cfg.runtime;
    let mut bar = Progress::new(
        total,
        state.step,
        opts.quiet || rank != 0,
        rt.progress,
        rt.log_every,
        rt.log_every_s,
    );
    let (mut losses, mut ces) = (Vec::new(), Vec::new());
    let mut guard = super::guard::SkipGuard::new(s.cfg.training.max_skipped_steps);
    let pipeline_label = format!(
        "plugin `{}` ({})",
        s.weigher.manifest().name,
        s.pipeline_path.display()
    );
    let mut last_ckpt = PathBuf::new();
    let mut last_val: Option<(u64, Validation)> = None;
    let mut interrupted_at = None;
    if state.step == 0 && s.cfg.runtime.eval_every > 0 {
        if let Some(v) = s.validate()? {
            bar.validation(0, &v);
            metrics.write(&val_json(serde_json::json!({"step": 0}), &v))?;
        }
    }
    if let Some(line) = super::stages::describe(&s).filter(|_| !opts.quiet) {
        bar.say(&line);
    }
    while state.step < total {
        if let Some(line) = super::stages::enter_stage(&mut s, state.step)? {
            if !opts.quiet {
                bar.say(&line);
            }
        }
        let t0 = Instant::now();
        let rep = train_step(&mut s, state.step)?;
        state.step += 1;
        guard.record(rep.skipped, state.step, rep.grad_norm, &pipeline_label)?;
        (state.epoch, state.index) = (s.batcher.epoch, s.batcher.index);
        losses.push(rep.loss);
        ces.push(rep.ce);
        let step_s = t0.elapsed().as_secs_f64();
        let tok_s = rep.tokens as f64 / step_s;
        // a non-finite norm is not a JSON number: written as null, with the skip counted
        let norm = rep.grad_norm.is_finite().then_some(rep.grad_norm);
        let mut line = serde_json::json!({"step": state.step, "loss": rep.loss, "ce": rep.ce, "lr": rep.lr, "grad_norm": norm, "skipped": rep.skipped, "skipped_steps": guard.total, "tokens": rep.tokens, "tokens_per_s": tok_s});
        // plugin metrics live under `plugin.`: they can never overwrite the host's keys
        for (k, v) in &rep.metrics {
            line[format!("plugin.{k}")] = serde_json::json!(v);
        }
        let tm = &rep.times;
        for (k, v) in [
            ("time.forward_s", tm.forward),
            ("time.plugin_s", tm.plugin),
            ("time.backward_s", tm.backward),
            ("time.optimizer_s", tm.optimizer),
            ("time.step_s", step_s),
        ] {
            line[k] = serde_json::json!(v);
        }
        if state.step == resumed_at.unwrap_or(0) + 1 {
            // launch → end of the first step (start-up included)
            line["time.first_step_done_s"] = serde_json::json!(started.elapsed().as_secs_f64());
        }
        if let Some(i) = s.stage {
            line["stage"] = serde_json::json!(i + 1);
        }
        if let Some(rss) = super::host_memory::host_rss_mib() {
            // this process's resident host memory now (not a high-water mark): flat across steps
            line["mem.host_rss_mib"] = serde_json::json!(rss);
        }
        if let Some((used, reserved)) = s.cfg.model.device.memory_high_water() {
            // this rank's GPU memory pool, highest so far (rank 0's in a sharded run)
            line["mem.peak_used_gib"] = serde_json::json!(used);
            line["mem.peak_reserved_gib"] = serde_json::json!(reserved);
        }
        bar.step(
            state.step,
            &StepFigures {
                loss: rep.loss,
                ce: rep.ce,
                lr: rep.lr,
                grad_norm: rep.grad_norm,
                tokens_per_s: tok_s,
            },
        );
        let eval_now = s.cfg.runtime.eval_every > 0 && state.step % s.cfg.runtime.eval_every == 0;
        if eval_now {
            if let Some(v) = s.validate()? {
                line = val_json(line, &v);
                bar.validation(state.step, &v);
                save_if_best(&run_dir, &mut s, &mut state, &v)?;
                last_val = Some((state.step, v));
            }
        }
        metrics.write(&line)?;
        let every = s.cfg.checkpoint.every;
        let mut stop = interrupted.load(Ordering::SeqCst);
        if let Some(f) = &s.fsdp {
            // Ctrl-C on any rank stops every rank at the same step (checkpoints are collectives)
            let flag = candle_core::Tensor::new(&[stop as u8 as f32], &candle_core::Device::Cpu)?;
            stop = f.comm().all_reduce_sum(&flag)?.to_vec1::<f32>()?[0] > 0.0;
        }
        if (every > 0 && state.step % every == 0) || stop {
            last_ckpt = save_step(&run_dir, &mut s, &state, rank)?;
        }
        if stop {
            bar.finish();
            interrupted_at = Some(state.step);
            break;
        }
    }
    bar.finish();
    let val = match (interrupted_at, last_val) {
        (Some(_), _) => None, // stop promptly: the checkpoint is saved, validation can run on it later
        (None, Some((at, v))) if at == state.step => Some(v),
        (None, _) => {
            let v = s.validate()?;
            if let Some(v) = &v {
                // the final validation counts for `best` and ends the metrics' validation curve
                save_if_best(&run_dir, &mut s, &mut state, v)?;
                metrics.write(&val_json(serde_json::json!({"step": state.step}), v))?;
            }
            v
        }
    };
    if !last_ckpt.ends_with(checkpoint::layout::step_name(state.step)) {
        last_ckpt = save_step(&run_dir, &mut s, &state, rank)?;
    }
    let summary = RunSummary {
        run_dir: run_dir.clone(),
        losses,
        ces,
        val,
        last_checkpoint: last_ckpt,
        seconds: started.elapsed().as_secs_f64(),
        interrupted: interrupted_at.is_some(),
    };
    if let Some(step) = interrupted_at.filter(|_| rank == 0) {
        // printed even with --quiet and outside a terminal: schedulers' logs must say why it stopped
        eprintln!(
            "interrupted at step {step} of {total} (checkpoint {}); continue with --resume {}",
            summary.last_checkpoint.display(),
            summary.last_checkpoint.display()
        );
    } else if !opts.quiet {
        super::console::print_end(&summary, &state, resumed_at);
    }
    Ok(summary)
}

/// Saves the `step-N` checkpoint of the current step, then (rank 0) deletes the step checkpoints
/// beyond `checkpoint.keep_last`.
fn save_step(run_dir: &Path, s: &mut Session, st: &TrainerState, rank: usize) -> Result<PathBuf> {
    let path = checkpoint::save(run_dir, &checkpoint::layout::step_name(st.step), s, st)?;
    if rank == 0 {
        checkpoint::layout::prune(run_dir, s.cfg.checkpoint.keep_last)
            .with_context(|| format!("checkpoint.keep_last: pruning {}", run_dir.display()))?;
    }
    Ok(path)
}

/// Saves the `best` checkpoint when `v` has the lowest validation loss of the pipeline so far (for
/// baseline, the plain CE), recording it in the trainer state.
fn save_if_best(
    run_dir: &Path,
    s: &mut Session,
    st: &mut TrainerState,
    v: &Validation,
) -> Result<()> {
    if st.best_val.is_none_or(|b| v.loss < b) {
        st.best_val = Some(v.loss);
        checkpoint::save(run_dir, checkpoint::layout::BEST, s, st)?;
    }
    Ok(())
}

/// Adds `val_ce`, `val_ce_h<k>` (each head's CE), `val_loss` and the plugin's `val_plugin.<metric>` to
/// a metrics line.
fn val_json(mut line: serde_json::Value, v: &Validation) -> serde_json::Value {
    line["val_ce"] = serde_json::json!(v.ce);
    for (k, c) in v.ce_heads.iter().enumerate().filter(|(_, c)| c.is_finite()) {
        line[format!("val_ce_h{k}")] = serde_json::json!(c);
    }
    line["val_loss"] = serde_json::json!(v.loss);
    for (k, x) in &v.metrics {
        line[format!("val_plugin.{k}")] = serde_json::json!(x);
    }
    line
}
