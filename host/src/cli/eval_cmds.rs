//! `wmtp eval`: validation cross-entropy of a checkpoint (mean over heads and per head, under its own or
//! another pipeline) and HumanEval pass@k of a checkpoint or a model.

use super::model_cmds::{load, parse_template};
use super::ModelArgsCli;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::collections::BTreeMap;
use std::path::PathBuf;
use wmtp_host::train::evaluate;

/// `wmtp eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Checkpoint directory (runs/…/checkpoints/step-N): its model, LoRA included.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Evaluate on this JSONL instead of the run's validation split.
    #[arg(long)]
    pub data: Option<String>,
    /// HumanEval pass@k on these problems ({task_id, prompt, test, entry_point} JSONL;
    /// scripts/make-humaneval-data.py writes .cache/data/humaneval_problems.jsonl).
    #[arg(long)]
    pub humaneval: Option<PathBuf>,
    /// With --humaneval and no --checkpoint: the model (GGUF, safetensors folder or preset).
    #[arg(long)]
    pub model: Option<String>,
    /// Samples per problem (temperature 0 takes one: greedy).
    #[arg(long, default_value_t = 1)]
    pub samples: usize,
    /// Sampling temperature of the completions (0: greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f64,
    /// Draw from the k most likely tokens only (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Seed of the draws.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Most tokens per completion.
    #[arg(long, default_value_t = 384)]
    pub max_new_tokens: usize,
    /// raw (continue the function as given: base models) or a template the prompt is put in as an
    /// instruction (auto, model, alpaca, chatml, none: chat models; the code of the answer's first fenced block
    /// is run).
    #[arg(long, default_value = "raw")]
    pub template: String,
    /// With --checkpoint: only the problems its run held out for validation (`data.val_fraction` of
    /// the problems, by problem id), so pass@1 is measured on problems it never trained on.
    #[arg(long, requires = "checkpoint")]
    pub held_out: bool,
    /// Only the first N problems.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Seconds each program may run.
    #[arg(long, default_value_t = 5.0)]
    pub timeout_s: f64,
    /// Completions generated together as one batch.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Per-problem results (completions and outcomes) as JSONL with --humaneval; without it, the
    /// validation result (ce, ce_heads, loss, metrics) as JSON.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Without --humaneval: score the checkpoint with this pipeline plugin instead of its own (its own
    /// defaults, only the model's weights loaded), e.g. plugins/baseline.wasm to compare runs of different
    /// pipelines on the same validation samples.
    #[arg(long)]
    pub pipeline: Option<PathBuf>,
    /// Device to evaluate on: cpu, cuda or cuda:N (default: the checkpoint's `model.device`, or cpu for
    /// --model).
    #[arg(long)]
    pub device: Option<wmtp_host::model::DeviceSpec>,
}

impl EvalArgs {
    /// The config overrides of the checkpoint's session (`--device`).
    pub fn overrides(&self) -> Vec<String> {
        self.device
            .iter()
            .map(|d| format!("model.device=\"{d}\""))
            .collect()
    }
}

/// The lines `wmtp eval` prints for a validation: head 0 (the model's next-token prediction) first,
/// then a row per head, then the mean over heads and the pipeline's loss.
pub fn ce_report(v: &evaluate::Validation) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(c0) = v.ce_heads.first() {
        lines.push(format!(
            "next-token (head 0): ce {c0:.4} nats, perplexity {:.2}",
            c0.exp()
        ));
    }
    lines.push("head  predicts  ce (nats)  perplexity".to_string());
    for (k, c) in v.ce_heads.iter().enumerate() {
        lines.push(format!(
            "{k:>4}  t+{:<7} {c:>9.4}  {:>10.2}",
            k + 1,
            c.exp()
        ));
    }
    lines.push(format!(
        "mean over {} heads: ce {:.4}; pipeline loss {:.4}",
        v.ce_heads.len(),
        v.ce,
        v.loss
    ));
    lines
}

/// `wmtp eval --checkpoint`: validation CE (head 0 first, per head, mean) and the pipeline's loss.
pub fn eval_ce(a: &EvalArgs) -> Result<()> {
    let ck = a
        .checkpoint
        .as_ref()
        .context("--checkpoint is required (or --humaneval)")?;
    let data: Vec<String> = a
        .data
        .iter()
        .map(|d| format!("data.validation={}", toml::Value::String(d.clone())))
        .collect();
    let overrides = [a.overrides(), data].concat();
    let mut s =
        wmtp_host::checkpoint::evaluate::checkpoint_session(ck, &overrides, a.pipeline.clone())?;
    let v = s
        .validate()?
        .context("no validation data (set data.validation or data.val_fraction)")?;
    for line in ce_report(&v) {
        println!("{line}");
    }
    if let Some(out) = &a.out {
        let json = serde_json::json!({
            "checkpoint": ck,
            "ce": v.ce,
            "ce_heads": v.ce_heads,
            "loss": v.loss,
            "metrics": v.metrics.iter().cloned().collect::<BTreeMap<_, _>>(),
        });
        std::fs::write(out, serde_json::to_string_pretty(&json)? + "\n")
            .with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

/// `wmtp eval --humaneval`: pass@1 (and pass@10 with ≥ 10 samples) of a checkpoint or a model.
pub fn humaneval(a: &EvalArgs) -> Result<()> {
    use wmtp_host::eval::humaneval::{evaluate, read_problems, summary};
    let Some(path) = &a.humaneval else {
        bail!("--humaneval PROBLEMS is required")
    };
    let opts = humaneval_options(a)?;
    let mut problems = read_problems(path)?;
    let (session, loaded);
    let (model, tok) = match (&a.checkpoint, &a.model) {
        (Some(ck), None) => {
            session =
                wmtp_host::checkpoint::evaluate::checkpoint_session(ck, &a.overrides(), None)?;
            if a.held_out {
                let d = &session.cfg.data;
                anyhow::ensure!(
                    d.validation.is_empty() && d.val_fraction > 0.0,
                    "--held-out: the checkpoint's run validated on a file or held nothing out"
                );
                problems
                    .retain(|p| wmtp_host::train::session::is_held_out(&p.task_id, d.val_fraction));
                anyhow::ensure!(!problems.is_empty(), "--held-out: no problem is held out");
            }
            (&session.model, &session.tokenizer)
        }
        (None, Some(m)) => {
            loaded = load(&ModelArgsCli {
                model: m.clone(),
                n_future_tokens: None,
                extra_heads_init: Default::default(),
                dtype: Default::default(),
                device: a.device.unwrap_or_default(),
            })?;
            let Some(t) = &loaded.tokenizer else {
                bail!("model `{m}` has no tokenizer")
            };
            (&loaded.model, t)
        }
        _ => bail!("give --checkpoint or --model (one of them)"),
    };
    if let Some(n) = a.limit {
        problems.truncate(n);
    }
    let t0 = std::time::Instant::now();
    let mut generated = None;
    let results = evaluate(model, tok, &problems, &opts, &mut |done, total| {
        eprint!("\rHumanEval: {done}/{total} completions");
        if done == total {
            generated = Some(t0.elapsed().as_secs_f64());
        }
    })?;
    let all = t0.elapsed().as_secs_f64();
    let gen = generated.unwrap_or(all);
    eprintln!(" (generated in {gen:.1} s, run in {:.1} s)", all - gen);
    if let Some(out) = &a.out {
        let mut text = String::new();
        for r in &results {
            text.push_str(&serde_json::to_string(r)?);
            text.push('\n');
        }
        std::fs::write(out, text).with_context(|| format!("writing {}", out.display()))?;
    }
    for (k, v) in summary(&results, &[1, 10, 100]) {
        println!("pass@{k} {:.4} over {} problems", v, results.len());
    }
    Ok(())
}

/// `--humaneval`'s generation and execution settings from the arguments, checked.
fn humaneval_options(a: &EvalArgs) -> Result<wmtp_host::eval::humaneval::HumanEvalOptions> {
    use wmtp_host::eval::python_sandbox::Limits;
    use wmtp_host::infer::generate::Sampling;
    anyhow::ensure!(a.samples >= 1, "--samples must be ≥ 1");
    anyhow::ensure!(
        a.temperature >= 0.0 && a.temperature.is_finite(),
        "--temperature must be ≥ 0"
    );
    anyhow::ensure!(a.top_p > 0.0 && a.top_p <= 1.0, "--top-p must be in (0, 1]");
    anyhow::ensure!(a.timeout_s > 0.0, "--timeout-s must be > 0");
    Ok(wmtp_host::eval::humaneval::HumanEvalOptions {
        n: a.samples,
        sampling: Sampling {
            temperature: a.temperature,
            top_p: a.top_p,
            top_k: a.top_k,
            seed: a.seed,
        },
        max_new: a.max_new_tokens,
        batch: a.batch,
        template: parse_template(&a.template)?,
        limits: Limits {
            timeout: std::time::Duration::from_secs_f64(a.timeout_s),
            ..Default::default()
        },
    })
}

#[cfg(test)]
mod tests {
    use super::ce_report;
    use wmtp_host::train::evaluate::Validation;

    /// Head 0 leads (not the mean over heads, whose exp is no perplexity of anything), one row per head.
    #[test]
    fn eval_leads_with_head_0() {
        let v = Validation {
            ce: 5.0,
            loss: 5.0,
            ce_heads: vec![1.0, 9.0],
            ..Default::default()
        };
        let lines = ce_report(&v);
        assert_eq!(
            lines[0],
            "next-token (head 0): ce 1.0000 nats, perplexity 2.72"
        );
        assert_eq!(lines[2], "   0  t+1          1.0000        2.72");
        assert_eq!(
            lines.last().unwrap(),
            "mean over 2 heads: ce 5.0000; pipeline loss 5.0000"
        );
    }
}
