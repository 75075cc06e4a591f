//! What `wmtp run` prints at the start and at the end of a run (the progress in between is
//! run/progress.rs).

use super::RunSummary;
use crate::checkpoint::{self, TrainerState};
use crate::train::session::Session;
use std::path::Path;

/// The start-up summary: model, trainable parameters, data, steps, run directory, config.
pub fn print_start(s: &Session, run_dir: &Path, resumed_at: Option<u64>) {
    let m = s.weigher.manifest();
    let a = &s.model.args;
    eprintln!(
        "wmtp run — {} {} ({})",
        m.name,
        m.version,
        s.pipeline_path.display()
    );
    eprintln!(
        "  model     {}: dim {}, {} trunk + {} heads, vocab {}, {:?} on {:?}",
        s.cfg.model.path,
        a.dim,
        a.n_trunk(),
        a.n_future_tokens,
        a.vocab_size,
        s.model.dtype(),
        s.model.device().location()
    );
    print_trainable(s);
    eprintln!(
        "  data      {}: {} train batches/epoch of {}, dropped (too long) {} train / {} validation",
        s.cfg.data.train,
        s.batcher.batches_per_epoch(),
        s.cfg.training.batch_size,
        s.dropped.0,
        s.dropped.1
    );
    if s.reference.is_some() {
        eprintln!(
            "  reference {}",
            if s.cfg.reference.model.is_empty() {
                format!("baseline stage of {} steps", s.cfg.reference.baseline_steps)
            } else {
                s.cfg.reference.model.clone()
            }
        );
    }
    eprintln!(
        "  steps     {} (lr {}, accum {}){}",
        s.cfg.training.steps,
        s.cfg.training.lr,
        s.cfg.training.grad_accum,
        resumed_at
            .map(|step| format!(", resuming at step {step}"))
            .unwrap_or_default()
    );
    eprintln!(
        "  memory    activation checkpointing {} ({})",
        s.checkpointing
            .describe(crate::model::activation_memory::checkpointed_blocks(
                &s.model.args
            )),
        s.checkpointing.reason
    );
    if let Some(spread) = s.strategy.describe() {
        eprintln!(
            "  ranks     {spread}; global batch {} sequences",
            s.cfg.training.batch_size * s.cfg.training.grad_accum * s.strategy.world_size()
        );
    }
    eprintln!("  run dir   {}", run_dir.display());
    let saved = run_dir.join(checkpoint::layout::CONFIG);
    match s.cfg.to_toml() {
        // the whole resolved config with -v (info logging) only: it is saved anyway
        Ok(text) if tracing::enabled!(tracing::Level::INFO) => {
            eprintln!("  resolved config (saved as {}):", saved.display());
            for line in text.lines().filter(|l| !l.is_empty()) {
                eprintln!("    {line}");
            }
        }
        _ => eprintln!("  config    {} (-v prints it)", saved.display()),
    }
}

/// The header's `trainable` line: trainable and total parameters (a sharded model counted from its
/// shards' layouts: its own weights are released), the value head's, the mode and the groups.
fn print_trainable(s: &Session) {
    let (total, trainable) = s.strategy.param_counts(&s.model);
    let vh: u64 = s.value_head.as_ref().map_or(0, |v| {
        crate::model::VisitParams::named_params(v)
            .iter()
            .filter(|(_, p)| p.is_trainable())
            .map(|(_, p)| p.numel() as u64)
            .sum()
    });
    let mode = if s.cfg.training.use_lora {
        format!(
            "LoRA r={} α={} {:?}",
            s.cfg.lora.rank, s.cfg.lora.alpha, s.cfg.lora.target_modules
        )
    } else if trainable > 0 {
        "full fine-tuning".into()
    } else {
        "model frozen".into()
    };
    eprintln!(
        "  trainable {} of {} ({:.3}%) + value head {} — {mode}; groups {:?}",
        trainable,
        total,
        100.0 * trainable as f64 / total as f64,
        vh,
        s.groups.iter().map(|g| g.name()).collect::<Vec<_>>()
    );
}

/// The end summary: steps, loss and CE, the final validation (per head), checkpoint, metrics file.
pub fn print_end(r: &RunSummary, st: &TrainerState, resumed_at: Option<u64>) {
    let first = r.losses.first().copied().unwrap_or(f64::NAN);
    let last = r.losses.last().copied().unwrap_or(f64::NAN);
    let steps = match resumed_at {
        Some(from) => format!(
            "{} steps (resumed at step {from}, now at {})",
            r.losses.len(),
            st.step
        ),
        None => format!("{} steps", r.losses.len()),
    };
    eprintln!(
        "done: {steps} in {:.1} s; loss {first:.4} → {last:.4}; ce {:.4} → {:.4}",
        r.seconds,
        r.ces.first().copied().unwrap_or(f64::NAN),
        r.ces.last().copied().unwrap_or(f64::NAN)
    );
    if let Some(v) = &r.val {
        eprintln!(
            "  validation: ce {:.4}, pipeline loss {:.4} (best loss {:.4})",
            v.ce,
            v.loss,
            st.best_val.unwrap_or(v.loss)
        );
        let heads: Vec<String> = v
            .ce_heads
            .iter()
            .enumerate()
            .map(|(k, c)| format!("h{k} {c:.4}"))
            .collect();
        eprintln!("              CE per head {}", heads.join(", "));
        let shown: Vec<String> = v
            .metrics
            .iter()
            .take(6)
            .map(|(k, x)| format!("{k} {x:.4}"))
            .collect();
        if !shown.is_empty() {
            eprintln!("              plugin metrics: {}", shown.join(", "));
        }
    }
    eprintln!("  checkpoint: {}", r.last_checkpoint.display());
    eprintln!(
        "  metrics:    {}",
        r.run_dir.join(checkpoint::layout::METRICS).display()
    );
}

/// Says that a resumed run's `training.steps` differs from its checkpoint's (a `--set` on resume), so
/// the lr schedule is recomputed over the new length.
pub fn note_changed_steps(ckpt: &Path, now: u64) {
    let Ok((cfg, _)) = checkpoint::read_meta(ckpt, &[]) else {
        return;
    };
    let before = cfg.training.steps;
    if before != now {
        eprintln!(
            "  note      training.steps is {now} now, {before} in the checkpoint: the learning-rate \
             schedule (warm-up, decay) is recomputed over {now} steps from here"
        );
    }
}

/// Says that a resumed checkpoint is already at (or past) `training.steps`: nothing is trained.
pub fn nothing_left(at: u64, total: u64) {
    eprintln!(
        "nothing to train: the checkpoint is at step {at} and training.steps is {total}; to train \
         further, resume with a larger --set training.steps=N"
    );
}
