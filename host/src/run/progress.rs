//! What a run shows while it trains: a progress bar on a terminal, and plain log lines elsewhere (nohup,
//! Slurm, CI, a pipe) — one every `runtime.log_every` steps or `runtime.log_every_s` seconds, whichever
//! comes first, plus the last step and every validation — so a cluster user can watch a run.

use crate::train::evaluate::Validation;
use std::io::IsTerminal;
use std::time::Instant;

/// One step's figures, as the progress display shows them.
#[derive(Debug, Clone, Copy)]
pub struct StepFigures {
    /// Pipeline loss.
    pub loss: f64,
    /// Unweighted cross-entropy.
    pub ce: f64,
    /// Learning rate of the step.
    pub lr: f64,
    /// Global gradient norm (not finite: the step was skipped).
    pub grad_norm: f64,
    /// Training tokens per second of the step.
    pub tokens_per_s: f64,
}

/// The progress display of a run: a bar, plain lines, or nothing (`--quiet`, other ranks).
pub struct Progress {
    bar: indicatif::ProgressBar,
    lines: Option<LinePolicy>,
    total: u64,
}

/// When plain lines are due.
struct LinePolicy {
    every_steps: u64,
    every_s: f64,
    first_step: u64,
    started: Instant,
    last_step: u64,
    last_at: Instant,
}

impl Progress {
    /// The display for a run of `total` steps starting at step `at`: nothing when `quiet`; a bar when
    /// `bar` is asked for (`runtime.progress`) and stderr is a terminal; plain lines otherwise, every
    /// `every_steps` steps or `every_s` seconds (0 turns that trigger off; both 0: no lines).
    pub fn new(
        total: u64,
        at: u64,
        quiet: bool,
        bar: bool,
        every_steps: u64,
        every_s: f64,
    ) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let show_bar = !quiet && bar && terminal;
        let lines =
            (!quiet && !show_bar && (every_steps > 0 || every_s > 0.0)).then(|| LinePolicy {
                every_steps,
                every_s,
                first_step: at,
                started: Instant::now(),
                last_step: at,
                last_at: Instant::now(),
            });
        Progress {
            bar: if show_bar {
                new_bar(total, at)
            } else {
                indicatif::ProgressBar::hidden()
            },
            lines,
            total,
        }
    }

    /// Prints `text` on its own line (above the bar on a terminal).
    pub fn say(&self, text: &str) {
        self.bar.suspend(|| eprintln!("{text}"));
    }

    /// Records that `step` (1-based, of `total`) finished with `f`: moves the bar, or prints a plain
    /// line when one is due (always at the last step).
    pub fn step(&mut self, step: u64, f: &StepFigures) {
        self.bar.set_message(format!(
            "loss {:.4}  ce {:.4}  {:.0} tok/s",
            f.loss, f.ce, f.tokens_per_s
        ));
        self.bar.set_position(step);
        let total = self.total;
        let Some(p) = self.lines.as_mut() else {
            return;
        };
        let since = p.last_at.elapsed().as_secs_f64();
        let due = (p.every_steps > 0 && step - p.last_step >= p.every_steps)
            || (p.every_s > 0.0 && since >= p.every_s)
            || step == total;
        if !due {
            return;
        }
        p.last_step = step;
        p.last_at = Instant::now();
        let elapsed = p.started.elapsed().as_secs_f64();
        let done = (step - p.first_step).max(1) as f64;
        let eta = elapsed / done * total.saturating_sub(step) as f64;
        eprintln!("{}", step_line(step, total, f, elapsed, eta));
    }

    /// Prints a validation's figures as a plain line (with lines on; the bar shows none).
    pub fn validation(&self, step: u64, v: &Validation) {
        if self.lines.is_some() {
            eprintln!("{}", validation_line(step, v));
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

fn new_bar(total: u64, at: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} step {pos}/{len} [{bar:30}] {msg}  ETA {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_position(at);
    bar
}

/// `step 20/100 (20%)  loss 1.2345  ce 1.2345  lr 2.00e-4  grad norm 0.532  4321 tok/s  elapsed 12s  ETA 48s`
pub fn step_line(step: u64, total: u64, f: &StepFigures, elapsed_s: f64, eta_s: f64) -> String {
    let norm = if f.grad_norm.is_finite() {
        format!("{:.3}", f.grad_norm)
    } else {
        "non-finite (step skipped)".to_string()
    };
    format!(
        "step {step}/{total} ({:.0}%)  loss {:.4}  ce {:.4}  lr {:.2e}  grad norm {norm}  {:.0} tok/s  elapsed {}  ETA {}",
        100.0 * step as f64 / total.max(1) as f64,
        f.loss,
        f.ce,
        f.lr,
        f.tokens_per_s,
        duration(elapsed_s),
        duration(eta_s)
    )
}

/// `step 20 validation: ce 1.2345, loss 1.2345, per head 1.20 / 3.40`
pub fn validation_line(step: u64, v: &Validation) -> String {
    let heads: Vec<String> = v.ce_heads.iter().map(|c| format!("{c:.4}")).collect();
    format!(
        "step {step} validation: ce {:.4}, pipeline loss {:.4}, per head {}",
        v.ce,
        v.loss,
        heads.join(" / ")
    )
}

/// Seconds as `45s`, `12m05s` or `3h07m`.
pub fn duration(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_read_as_a_person_expects() {
        let f = StepFigures {
            loss: 1.23456,
            ce: 2.5,
            lr: 2e-4,
            grad_norm: 0.5321,
            tokens_per_s: 4321.4,
        };
        assert_eq!(
            step_line(20, 100, &f, 12.2, 48.0),
            "step 20/100 (20%)  loss 1.2346  ce 2.5000  lr 2.00e-4  grad norm 0.532  4321 tok/s  elapsed 12s  ETA 48s"
        );
        let skipped = StepFigures {
            grad_norm: f64::NAN,
            ..f
        };
        assert!(step_line(1, 3, &skipped, 0.0, 0.0).contains("grad norm non-finite (step skipped)"));
        assert_eq!(duration(725.0), "12m05s");
        assert_eq!(duration(11_220.0), "3h07m");
    }
}
