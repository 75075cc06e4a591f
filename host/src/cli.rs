//! The `wmtp` command line: `info` (architecture, parameter counts, memory estimate), `generate` (greedy
//! continuation with head 0) and `perplexity` (next-token perplexity of a text).

use crate::model::load::{load_model, ExtraHeadsInit, LoadOptions, LoadedModel};
use crate::model::memory::{human_bytes, MemoryEstimate};
use crate::model::{eval, LoraConfig, ParamGroup, VisitParams};
use anyhow::{bail, Context, Result};
use candle_core::DType;
use clap::{Args, Parser, Subcommand};
use std::collections::BTreeMap;

/// wmtp — multi-token-prediction fine-tuning with LoRA and Wasm pipeline plugins.
#[derive(Debug, Parser)]
#[command(name = "wmtp", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a model's architecture, parameter counts and training-memory estimate.
    Info(InfoArgs),
    /// Continue a prompt greedily with head 0.
    Generate(GenerateArgs),
    /// Next-token perplexity (head 0) of a text.
    Perplexity(PerplexityArgs),
    /// Train: a pipeline plugin on a config (or the embedded default: the tiny preset on the bundled corpus).
    Run(RunCli),
    /// Validation cross-entropy of a checkpoint (plain, and weighted by its pipeline).
    Eval {
        /// Checkpoint directory (runs/…/checkpoints/step-N).
        #[arg(long)]
        checkpoint: std::path::PathBuf,
        /// Evaluate on this JSONL instead of the run's validation split.
        #[arg(long)]
        data: Option<String>,
    },
    /// Write a checkpoint's model with its LoRA merged, as a full safetensors checkpoint.
    Merge {
        /// Checkpoint directory.
        #[arg(long)]
        checkpoint: std::path::PathBuf,
        /// Output directory (params.json + model.safetensors).
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Plot a run's metrics (loss, cross-entropy, plugin metrics) to RUN_DIR/plots.svg.
    Plot {
        /// The run directory (holds metrics.jsonl).
        run_dir: std::path::PathBuf,
    },
    /// Inspect and check pipeline plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
}

/// `wmtp run`.
#[derive(Debug, Args)]
pub struct RunCli {
    /// The pipeline plugin (.wasm component); on --resume defaults to the checkpoint's.
    #[arg(long)]
    pub pipeline: Option<std::path::PathBuf>,
    /// Run config (configs/*.toml); without it the embedded default runs.
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    /// Override a config key, e.g. --set training.steps=100 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Continue from a checkpoint directory (runs/…/checkpoints/step-N).
    #[arg(long)]
    pub resume: Option<std::path::PathBuf>,
}

/// `wmtp plugin …`.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Print a plugin's manifest and config keys.
    Describe {
        /// The plugin (.wasm component).
        plugin: std::path::PathBuf,
    },
    /// Run the conformance checks on plugins; exits non-zero if any fails.
    Check {
        /// The plugins (.wasm components).
        #[arg(required = true)]
        plugins: Vec<std::path::PathBuf>,
        /// A run config whose `[plugin]` table (or, without one, the whole file) configures the plugin.
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        /// Time budget for one call on a 64k-token × 4-head batch, in milliseconds.
        #[arg(long, default_value_t = 100)]
        budget_ms: u64,
    },
}

/// Where the model comes from.
#[derive(Debug, Args)]
pub struct ModelArgsCli {
    /// A preset (tiny, 7b_1t_4, 1b_mtp, smollm2-135m), a .gguf file, or a Meta / HF checkpoint directory.
    #[arg(long)]
    pub model: String,
    /// Number of prediction heads; widens a next-token checkpoint (extra heads copied from head 0).
    #[arg(long)]
    pub n_future_tokens: Option<usize>,
    /// How extra heads are initialised when widening: copy | random.
    #[arg(long, default_value = "copy", value_parser = parse_heads_init)]
    pub extra_heads_init: ExtraHeadsInit,
    /// Weight dtype: f32 | bf16 | f16.
    #[arg(long, default_value = "f32", value_parser = parse_dtype)]
    pub dtype: DType,
    /// Device: cpu, cuda or cuda:N (cuda needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// The candle device for `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> Result<candle_core::Device> {
    match s {
        "cpu" => Ok(candle_core::Device::Cpu),
        "cuda" => Ok(candle_core::Device::new_cuda(0)?),
        _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => Ok(candle_core::Device::new_cuda(i)?),
            _ => bail!("unknown device `{s}` (cpu, cuda, cuda:N)"),
        },
    }
}

/// `wmtp info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    #[command(flatten)]
    /// The model.
    pub model: ModelArgsCli,
    /// Count LoRA-trainable parameters instead of full fine-tuning.
    #[arg(long)]
    pub lora: bool,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    pub rank: usize,
    /// LoRA α.
    #[arg(long, default_value_t = 16.0)]
    pub alpha: f64,
    /// LoRA targets, comma-separated (wq,wk,wv,wo,w1,w2,w3 or all-linear).
    #[arg(long, default_value = "wq,wk,wv,wo")]
    pub targets: String,
    /// Ranks the training state is sharded over (FSDP), for the per-rank estimate.
    #[arg(long, default_value_t = 1)]
    pub world_size: usize,
}

/// `wmtp generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    /// The model.
    pub model: ModelArgsCli,
    /// The prompt text.
    #[arg(long)]
    pub prompt: String,
    /// Most tokens to add.
    #[arg(long, default_value_t = 32)]
    pub max_new_tokens: usize,
}

/// `wmtp perplexity`.
#[derive(Debug, Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    /// The model.
    pub model: ModelArgsCli,
    /// The text to score (or use --file).
    #[arg(long, conflicts_with = "file")]
    pub text: Option<String>,
    /// A UTF-8 file to score.
    #[arg(long)]
    pub file: Option<std::path::PathBuf>,
}

fn parse_dtype(s: &str) -> Result<DType, String> {
    match s {
        "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        "f16" => Ok(DType::F16),
        _ => Err(format!("unknown dtype `{s}` (f32, bf16, f16)")),
    }
}

fn parse_heads_init(s: &str) -> Result<ExtraHeadsInit, String> {
    match s {
        "copy" => Ok(ExtraHeadsInit::Copy),
        "random" => Ok(ExtraHeadsInit::Random),
        _ => Err(format!("unknown extra-heads init `{s}` (copy, random)")),
    }
}

fn load(m: &ModelArgsCli) -> Result<LoadedModel> {
    let opts = LoadOptions {
        device: parse_device(&m.device)?,
        dtype: m.dtype,
        n_future_tokens: m.n_future_tokens,
        extra_heads: m.extra_heads_init,
        ..Default::default()
    };
    load_model(&m.model, &opts)
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Info(a) => info(&a),
        Command::Generate(a) => generate(&a),
        Command::Perplexity(a) => perplexity(&a),
        Command::Plugin(c) => crate::plugin::cli::run(c),
        Command::Eval { checkpoint, data } => {
            let (ce, loss) =
                crate::train::tools::eval_checkpoint(&checkpoint, data.as_deref(), None)?;
            println!(
                "validation: ce {ce:.4} nats (perplexity {:.2}), pipeline loss {loss:.4}",
                ce.exp()
            );
            Ok(())
        }
        Command::Merge { checkpoint, out } => {
            crate::train::tools::merge_checkpoint(&checkpoint, &out)?;
            println!(
                "merged model written to {} (use it with --model {})",
                out.display(),
                out.display()
            );
            Ok(())
        }
        Command::Plot { run_dir } => {
            let p = crate::train::plot::plot_run(&run_dir)?;
            println!("wrote {}", p.display());
            Ok(())
        }
        Command::Run(r) => {
            let opts = crate::train::run::RunOptions {
                pipeline: r.pipeline,
                config: r.config,
                set: r.set,
                resume: r.resume,
                quiet: false,
            };
            crate::train::run::run(&opts).map(|_| ())
        }
    }
}

fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn info(a: &InfoArgs) -> Result<()> {
    let lora = LoraConfig {
        rank: a.rank,
        alpha: a.alpha,
        target_modules: a.targets.split(',').map(|s| s.trim().to_string()).collect(),
        ..Default::default()
    };
    lora.validate()?;
    // presets are described from their shape alone (a 7B model is never allocated for `info`)
    let (args, counted) = match crate::model::ModelArgs::preset(&a.model.model)
        .filter(|_| !std::path::Path::new(&a.model.model).exists())
    {
        Some(mut args) => {
            if let Some(h) = a.model.n_future_tokens {
                args.n_layers = args.n_layers - args.n_future_tokens + h;
                args.n_future_tokens = h;
            }
            args.validate()?;
            (args, None)
        }
        None => {
            let mut m = load(&a.model)?.model;
            if a.lora {
                m.add_lora(&lora, 0)?;
            } else {
                m.set_trainable_groups(&[ParamGroup::Trunk, ParamGroup::Heads])?;
            }
            let mut by_group: BTreeMap<ParamGroup, u64> = BTreeMap::new();
            m.visit("", &mut |_, p| {
                *by_group.entry(p.group()).or_default() += p.numel() as u64
            });
            (m.args.clone(), Some((m.param_counts(), by_group)))
        }
    };
    let c = args.param_counts();
    println!("model       {}", a.model.model);
    println!("shape       dim {}  blocks {} ({} trunk + {} heads)  attention heads {} (kv {})  head_dim {}",
        args.dim, args.n_layers, args.n_trunk(), args.n_future_tokens, args.n_heads, args.kv_heads(), args.head_dim());
    println!(
        "            ffn hidden {}  vocab {}  rope θ {}  norm ε {}  max_seq_len {}",
        args.hidden_dim(),
        args.vocab_size,
        args.rope_theta,
        args.norm_eps,
        args.max_seq_len
    );
    println!(
        "parameters  total {}  (embedding {}, trunk {}, heads {}, norm+output {})",
        count(c.total()),
        count(c.embedding),
        count(c.trunk),
        count(c.heads),
        count(c.norm_and_output)
    );
    let trainable = if a.lora {
        lora.trainable_count(&args)?
    } else {
        c.trunk + c.heads + c.embedding + c.norm_and_output
    };
    let total = c.total() + if a.lora { trainable } else { 0 };
    let mode = if a.lora {
        format!(
            "LoRA r={} α={} on {:?}",
            lora.rank,
            lora.alpha,
            lora.targets()?
        )
    } else {
        "full fine-tuning".into()
    };
    println!(
        "trainable   {}  of {}  ({:.4}%)  — {mode}",
        count(trainable),
        count(total),
        100.0 * trainable as f64 / total as f64
    );
    if let Some(((alloc_total, alloc_trainable), groups)) = counted {
        anyhow::ensure!(alloc_total == total && alloc_trainable == trainable,
            "internal check failed: allocated counts {alloc_total}/{alloc_trainable} differ from the formula {total}/{trainable}");
        let g: Vec<String> = groups
            .iter()
            .map(|(k, v)| format!("{} {}", k.name(), count(*v)))
            .collect();
        println!(
            "allocated   {} (by group: {})",
            count(alloc_total),
            g.join(", ")
        );
    }
    let bytes = a.model.dtype.size_in_bytes();
    println!("\nestimated training memory per rank (world size {}, weights in {:?}; activations not included):", a.world_size, a.model.dtype);
    println!("  {:<22}{:>14}{:>14}", "", "full FT", "LoRA");
    let full = MemoryEstimate::new(c.total(), c.total(), bytes, a.world_size);
    let lt = lora.trainable_count(&args)?;
    let lo = MemoryEstimate::new(c.total() + lt, lt, bytes, a.world_size);
    for (name, f, l) in [
        ("weights", full.weights, lo.weights),
        ("gradients (f32)", full.grads, lo.grads),
        ("AdamW state (2×f32)", full.adam_state, lo.adam_state),
        ("f32 master weights", full.master_weights, lo.master_weights),
        ("total", full.total(), lo.total()),
    ] {
        println!("  {name:<22}{:>14}{:>14}", human_bytes(f), human_bytes(l));
    }
    Ok(())
}

fn generate(a: &GenerateArgs) -> Result<()> {
    let lm = load(&a.model)?;
    let Some(tok) = &lm.tokenizer else {
        bail!(
            "model `{}` has no tokenizer (tokenizer.json, tokenizer.model or GGUF metadata)",
            a.model.model
        )
    };
    let prompt = tok.encode(&a.prompt, true)?;
    let out = eval::greedy_continue(&lm.model, &prompt, a.max_new_tokens, tok.eos_id)?;
    println!("{}{}", a.prompt, tok.decode(&out[prompt.len()..])?);
    Ok(())
}

fn perplexity(a: &PerplexityArgs) -> Result<()> {
    let text = match (&a.text, &a.file) {
        (Some(t), _) => t.clone(),
        (None, Some(f)) => {
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
        }
        (None, None) => bail!("give --text or --file"),
    };
    let lm = load(&a.model)?;
    let Some(tok) = &lm.tokenizer else {
        bail!("model `{}` has no tokenizer", a.model.model)
    };
    let ids = tok.encode(&text, true)?;
    let ce = eval::next_token_ce(&lm.model, &ids)?;
    println!(
        "tokens {}  cross-entropy {ce:.4} nats  perplexity {:.2}",
        ids.len(),
        ce.exp()
    );
    Ok(())
}
