//! The training loop's bookkeeping around [`train_step`]: the metrics line of each step, validation and
//! `best`, periodic checkpoints (with `checkpoint.keep_last`), Ctrl-C (every rank stops at the same
//! step), the progress display, and the end of the run (final validation, last checkpoint, summary).

use super::progress::{Progress, StepFigures};
use super::RunSummary;
use crate::checkpoint::{self, TrainerState};
use crate::train::evaluate::Validation;
use crate::train::session::Session;
use crate::train::session_step::train_step;
use crate::train::step::StepReport;
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Everything the loop keeps between steps.
pub struct TrainLoop {
    run_dir: PathBuf,
    rank: usize,
    quiet: bool,
    started: Instant,
    resumed_at: Option<u64>,
    interrupted: Arc<AtomicBool>,
    metrics: super::metrics_log::MetricsLog,
    bar: Progress,
    guard: crate::train::guard::SkipGuard,
    pipeline_label: String,
    losses: Vec<f64>,
    ces: Vec<f64>,
    last_ckpt: PathBuf,
    last_val: Option<(u64, Validation)>,
}

impl TrainLoop {
    /// The loop of session `s` at `state`, writing into `run_dir`; Ctrl-C sets a flag the loop reads
    /// after each step.
    pub fn new(
        s: &Session,
        state: &TrainerState,
        run_dir: &Path,
        rank: usize,
        quiet: bool,
        started: Instant,
        resumed_at: Option<u64>,
    ) -> Result<Self> {
        let interrupted = Arc::new(AtomicBool::new(false));
        let flag = interrupted.clone();
        let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
        let rt = &s.cfg.runtime;
        Ok(TrainLoop {
            run_dir: run_dir.to_path_buf(),
            rank,
            quiet,
            started,
            resumed_at,
            interrupted,
            // rank 0 writes the metrics; the others' lines (the same global figures) go nowhere
            metrics: super::metrics_log::MetricsLog::open(run_dir, rank, rt.tensorboard)?,
            bar: Progress::new(
                s.cfg.training.steps,
                state.step,
                quiet,
                rt.progress,
                rt.log_every,
                rt.log_every_s,
            ),
            guard: crate::train::guard::SkipGuard::new(s.cfg.training.max_skipped_steps),
            pipeline_label: format!(
                "plugin `{}` ({})",
                s.weigher.manifest().name,
                s.pipeline_path.display()
            ),
            losses: Vec::new(),
            ces: Vec::new(),
            last_ckpt: PathBuf::new(),
            last_val: None,
        })
    }

    /// Before the first step of a fresh run: the untrained model's validation (step 0), and the stage
    /// the run starts in.
    pub fn begin(&mut self, s: &mut Session, state: &TrainerState) -> Result<()> {
        if state.step == 0 && s.cfg.runtime.eval_every > 0 {
            if let Some(v) = s.validate()? {
                self.bar.validation(0, &v);
                self.metrics
                    .write(&val_json(serde_json::json!({"step": 0}), &v))?;
            }
        }
        if let Some(line) = crate::train::stage_switch::describe(s).filter(|_| !self.quiet) {
            self.bar.say(&line);
        }
        Ok(())
    }

    /// One optimizer step and what follows it: the metrics line, validation every `eval_every` steps,
    /// a checkpoint every `checkpoint.every` steps or on Ctrl-C. Returns false when the run must stop.
    pub fn step(&mut self, s: &mut Session, state: &mut TrainerState) -> Result<bool> {
        if let Some(line) = crate::train::stage_switch::enter_stage(s, state.step)? {
            if !self.quiet {
                self.bar.say(&line);
            }
        }
        let t0 = Instant::now();
        let rep = train_step(s, state.step)?;
        state.step += 1;
        self.guard
            .record(rep.skipped, state.step, rep.grad_norm, &self.pipeline_label)?;
        (state.epoch, state.index) = (s.batcher.epoch, s.batcher.index);
        self.losses.push(rep.loss);
        self.ces.push(rep.ce);
        let step_s = t0.elapsed().as_secs_f64();
        let mut line = self.metrics_line(s, state.step, &rep, step_s);
        self.bar.step(
            state.step,
            &StepFigures {
                loss: rep.loss,
                ce: rep.ce,
                lr: rep.lr,
                grad_norm: rep.grad_norm,
                tokens_per_s: rep.tokens as f64 / step_s,
            },
        );
        let every = s.cfg.runtime.eval_every;
        if every > 0 && state.step.is_multiple_of(every) {
            if let Some(v) = s.validate()? {
                line = val_json(line, &v);
                self.bar.validation(state.step, &v);
                self.save_if_best(s, state, &v)?;
                self.last_val = Some((state.step, v));
            }
        }
        self.metrics.write(&line)?;
        let stop = self.stop_requested(s)?;
        let every = s.cfg.checkpoint.every;
        if (every > 0 && state.step.is_multiple_of(every)) || stop {
            self.last_ckpt = self.save_step(s, state)?;
        }
        Ok(!stop)
    }

    /// Whether Ctrl-C was pressed (on any rank: every rank stops at the same step, checkpoints being
    /// collectives).
    fn stop_requested(&self, s: &Session) -> Result<bool> {
        let stop = self.interrupted.load(Ordering::SeqCst);
        Ok(s.strategy.sum_over_ranks(&[stop as u8 as f64])?[0] > 0.0)
    }

    /// The metrics.jsonl line of a step: loss, CE, lr, norm, tokens, the plugin's metrics (under
    /// `plugin.`), phase times, stage, host and GPU memory.
    fn metrics_line(
        &self,
        s: &Session,
        step: u64,
        rep: &StepReport,
        step_s: f64,
    ) -> serde_json::Value {
        // a non-finite norm is not a JSON number: written as null, with the skip counted
        let norm = rep.grad_norm.is_finite().then_some(rep.grad_norm);
        let mut line = serde_json::json!({"step": step, "loss": rep.loss, "ce": rep.ce, "lr": rep.lr,
            "grad_norm": norm, "skipped": rep.skipped, "skipped_steps": self.guard.total,
            "tokens": rep.tokens, "tokens_per_s": rep.tokens as f64 / step_s});
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
        if step == self.resumed_at.unwrap_or(0) + 1 {
            // launch → end of the first step (start-up included)
            line["time.first_step_done_s"] =
                serde_json::json!(self.started.elapsed().as_secs_f64());
        }
        if let Some(i) = s.stage {
            line["stage"] = serde_json::json!(i + 1);
        }
        if let Some(rss) = crate::train::host_memory::host_rss_mib() {
            // this process's resident host memory now (not a high-water mark): flat across steps
            line["mem.host_rss_mib"] = serde_json::json!(rss);
        }
        if let Some((used, reserved)) = s.cfg.model.device.memory_high_water() {
            // this rank's GPU memory pool, highest so far (rank 0's in a sharded run)
            line["mem.peak_used_gib"] = serde_json::json!(used);
            line["mem.peak_reserved_gib"] = serde_json::json!(reserved);
        }
        line
    }

    /// The end of the run: the final validation (skipped when interrupted; reused when the last step
    /// validated; it counts for `best`), the last step's checkpoint, and the summary printed.
    pub fn finish(
        mut self,
        mut s: Session,
        mut state: TrainerState,
        interrupted: bool,
    ) -> Result<RunSummary> {
        self.bar.finish();
        let val = match (interrupted, self.last_val.take()) {
            (true, _) => None, // stop promptly: the checkpoint is saved, validation can run on it later
            (false, Some((at, v))) if at == state.step => Some(v),
            (false, _) => {
                let v = s.validate()?;
                if let Some(v) = &v {
                    // the final validation counts for `best` and ends the metrics' validation curve
                    self.save_if_best(&mut s, &mut state, v)?;
                    self.metrics
                        .write(&val_json(serde_json::json!({"step": state.step}), v))?;
                }
                v
            }
        };
        if !self
            .last_ckpt
            .ends_with(checkpoint::layout::step_name(state.step))
        {
            self.last_ckpt = self.save_step(&mut s, &state)?;
        }
        let summary = RunSummary {
            run_dir: self.run_dir.clone(),
            losses: self.losses,
            ces: self.ces,
            val,
            last_checkpoint: self.last_ckpt,
            seconds: self.started.elapsed().as_secs_f64(),
            interrupted,
        };
        if interrupted && self.rank == 0 {
            // printed even with --quiet and outside a terminal: schedulers' logs must say why it stopped
            let ck = summary.last_checkpoint.display();
            eprintln!(
                "interrupted at step {} of {} (checkpoint {ck}); continue with --resume {ck}",
                state.step, s.cfg.training.steps
            );
        } else if !self.quiet {
            super::console::print_end(&summary, &state, self.resumed_at);
        }
        Ok(summary)
    }

    /// Saves the `step-N` checkpoint of the current step, then (rank 0) deletes the step checkpoints
    /// beyond `checkpoint.keep_last`.
    fn save_step(&self, s: &mut Session, st: &TrainerState) -> Result<PathBuf> {
        let path = checkpoint::save(
            &self.run_dir,
            &checkpoint::layout::step_name(st.step),
            s,
            st,
        )?;
        if self.rank == 0 {
            checkpoint::layout::prune(&self.run_dir, s.cfg.checkpoint.keep_last).with_context(
                || format!("checkpoint.keep_last: pruning {}", self.run_dir.display()),
            )?;
        }
        Ok(path)
    }

    /// Saves the `best` checkpoint when `v` has the lowest validation loss of the pipeline so far (for
    /// baseline, the plain CE), recording it in the trainer state.
    fn save_if_best(&self, s: &mut Session, st: &mut TrainerState, v: &Validation) -> Result<()> {
        if st.best_val.is_none_or(|b| v.loss < b) {
            st.best_val = Some(v.loss);
            checkpoint::save(&self.run_dir, checkpoint::layout::BEST, s, st)?;
        }
        Ok(())
    }
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
