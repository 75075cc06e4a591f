//! `wmtp distill`: self-distillation data — a model's own answers to a dataset's instructions
//! (wmtp_host::infer::distill), written as JSONL rows that `data.train` reads.

use super::model_cmds::load;
use super::ModelArgsCli;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;
use wmtp_host::infer::distill::{distill, DistillOptions};

/// `wmtp distill`.
#[derive(Debug, Args)]
pub struct DistillArgs {
    #[command(flatten)]
    /// The model whose answers are written (normally the frozen base model).
    pub model: ModelArgsCli,
    /// The dataset whose instructions are answered (JSONL rows with an `instruction`, and an `input`
    /// if any; an `output` is not needed).
    #[arg(long)]
    pub data: PathBuf,
    /// Where the answer rows go (JSONL; refused if it exists).
    #[arg(long)]
    pub out: PathBuf,
    /// The prompt template, as training's data.template: auto, model, alpaca, chatml, none.
    #[arg(long, default_value = "auto")]
    pub template: String,
    /// Most tokens per answer.
    #[arg(long, default_value_t = 384)]
    pub max_new_tokens: usize,
    /// Prompts decoded together.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    #[command(flatten)]
    /// How answers are drawn.
    pub sampling: super::SamplingArgs,
}

/// Runs `wmtp distill`.
pub fn run(a: &DistillArgs) -> Result<()> {
    if a.out.exists() {
        bail!("--out {}: exists (not overwritten)", a.out.display());
    }
    let sampling = a.sampling.checked()?;
    let template = a
        .template
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--template: {e}"))?;
    let rows = wmtp_host::data::dataset::read_instruction_rows(&a.data)
        .with_context(|| format!("--data {}", a.data.display()))?;
    let mut lm = load(&a.model)?;
    // a preset trains with the byte tokenizer (as `Session` does), so its answers use it too
    let tok = lm
        .tokenizer
        .take()
        .unwrap_or_else(wmtp_host::data::Tokenizer::bytes);
    let tok = &tok;
    let opts = DistillOptions {
        template,
        max_new: a.max_new_tokens,
        batch: a.batch,
        sampling,
    };
    let t0 = std::time::Instant::now();
    let out = distill(&lm.model, tok, &rows, &opts, &mut |done, total| {
        eprint!("\rdistill: {done}/{total} answers");
    })?;
    eprintln!(" ({:.0} s)", t0.elapsed().as_secs_f64());
    let tmp = a.out.with_extension("jsonl.tmp");
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
    );
    for row in &out {
        writeln!(f, "{row}")?;
    }
    f.into_inner()
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", tmp.display()))?
        .sync_all()?;
    std::fs::rename(&tmp, &a.out).with_context(|| format!("writing {}", a.out.display()))?;
    println!(
        "{} answers of {} written to {} (train on them with --set data.train=\"{}\")",
        out.len(),
        lm.source,
        a.out.display(),
        a.out.display()
    );
    Ok(())
}
