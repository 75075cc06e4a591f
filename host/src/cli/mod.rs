//! The `wmtp` command line: it parses arguments into typed values and dispatches to the library; the
//! library never sees clap. Commands: `run` (train), `eval` (validation of a checkpoint), `merge` (LoRA
//! folded into the base), `plot` (a run's metrics), `info`, `generate`, `perplexity` (model checks) and
//! `plugin` (`describe`, `check`, `new`, `build` for pipeline plugins).

mod distill_cmd;
mod eval_cmds;
mod model_cmds;
mod plugin_cmds;
mod plugin_template;

use anyhow::Result;
use clap::{ArgAction, Args, Parser, Subcommand};
use std::path::PathBuf;
use wmtp_host::formats::load::ExtraHeadsInit;
use wmtp_host::model::{DeviceSpec, Precision};

/// wmtp — multi-token-prediction fine-tuning with LoRA and Wasm pipeline plugins.
#[derive(Debug, Parser)]
#[command(name = "wmtp", version, about)]
pub struct Cli {
    /// More log output (-v: info, -vv: debug); warnings, plugin warnings included, always show.
    /// RUST_LOG overrides it.
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train: a pipeline plugin on a config (or the embedded default: the tiny preset on the bundled corpus).
    Run(RunCli),
    /// Validation cross-entropy of a checkpoint (plain, and weighted by its pipeline), or with
    /// --humaneval pass@k of a checkpoint or a model on HumanEval problems.
    Eval(eval_cmds::EvalArgs),
    /// Write a checkpoint's model with its LoRA merged, as a full safetensors checkpoint.
    Merge {
        /// Checkpoint directory.
        #[arg(long)]
        checkpoint: PathBuf,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// meta: params.json + model.safetensors (Meta names); hf: config.json + model.safetensors for
        /// transformers (head 0's LlamaForCausalLM; extra heads in wmtp_extra_heads.safetensors).
        #[arg(long, value_enum, default_value_t = MergeFormatArg::Meta)]
        format: MergeFormatArg,
    },
    /// Export a checkpoint's LoRA adapter for other tools (peft: `PeftModel.from_pretrained` on the HF model).
    Export {
        /// Checkpoint directory.
        #[arg(long)]
        checkpoint: PathBuf,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// The layout: peft (adapter_config.json + adapter_model.safetensors with HF module names).
        #[arg(long, default_value = "peft")]
        format: String,
    },
    /// Plot a run's metrics (loss, cross-entropy, plugin metrics) to RUN_DIR/plots.svg and plots.png.
    Plot {
        /// The run directory (holds metrics.jsonl).
        run_dir: PathBuf,
    },
    /// Print a model's architecture, parameter counts and training-memory estimate.
    Info(model_cmds::InfoArgs),
    /// Continue prompts with head 0 (KV-cached; greedy, or sampled with --temperature/--top-p/--seed).
    Generate(model_cmds::GenerateArgs),
    /// Next-token perplexity (head 0) of a text.
    Perplexity(model_cmds::PerplexityArgs),
    /// Self-distillation data: a model's own answers to a dataset's instructions, as JSONL rows to train
    /// the extra heads on (Medusa-2).
    Distill(distill_cmd::DistillArgs),
    /// Write, build, inspect and check pipeline plugins.
    #[command(subcommand)]
    Plugin(plugin_cmds::PluginCommand),
    /// Run a `wmtp` command (normally `run …`) as N ranks on this node, sharded (FSDP): e.g.
    /// `wmtp launch --nproc-per-node 4 -- run --config configs/baseline_lora.toml --pipeline plugins/baseline.wasm`.
    /// Sets torchrun's RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT for each; a rank that fails
    /// stops the others.
    Launch(LaunchCli),
}

/// `wmtp launch`.
#[derive(Debug, Args)]
pub struct LaunchCli {
    /// Ranks on this node (one per GPU).
    #[arg(long, default_value_t = 1)]
    pub nproc_per_node: usize,
    /// Nodes in the job (run `wmtp launch` once on each).
    #[arg(long, default_value_t = 1)]
    pub nnodes: usize,
    /// This node's index, 0..nnodes.
    #[arg(long, default_value_t = 0)]
    pub node_rank: usize,
    /// Address of node 0, where rank 0 listens.
    #[arg(long, default_value = "127.0.0.1")]
    pub master_addr: String,
    /// Port rank 0 listens on.
    #[arg(long, default_value_t = wmtp_host::parallel::launch::DEFAULT_MASTER_PORT)]
    pub master_port: u16,
    /// Seconds the rendezvous and each collective wait for the other ranks.
    #[arg(long, default_value_t = wmtp_host::parallel::launch::DEFAULT_TIMEOUT_S)]
    pub timeout_s: f64,
    /// The command each rank runs, after `--` (e.g. `run --config …`).
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// `wmtp run`.
#[derive(Debug, Args)]
pub struct RunCli {
    /// The pipeline plugin (.wasm component); on --resume defaults to the checkpoint's.
    #[arg(long)]
    pub pipeline: Option<PathBuf>,
    /// Run config (configs/*.toml); without it the embedded default runs.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override a config key, e.g. --set training.steps=100 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Continue from a checkpoint directory (runs/…/checkpoints/step-N), or from a run directory's latest
    /// complete checkpoint (runs/…).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// On --resume, accept a pipeline plugin whose bytes differ from the one the checkpoint was written with.
    #[arg(long, requires = "resume")]
    pub allow_plugin_change: bool,
    /// Device (cpu, cuda, cuda:N); the same as --set model.device=….
    #[arg(long)]
    pub device: Option<DeviceSpec>,
    /// Compute dtype (f32, bf16, f16); the same as --set model.dtype=….
    #[arg(long)]
    pub dtype: Option<Precision>,
}

/// Where the model comes from (`info`, `generate`, `perplexity`).
#[derive(Debug, Args)]
pub struct ModelArgsCli {
    /// A preset (tiny, 7b_1t_4, 1b_mtp, smollm2-135m), a .gguf file, a Meta / HF checkpoint directory, or a
    /// training checkpoint (runs/…/checkpoints/step-N: LoRA merged).
    #[arg(long)]
    pub model: String,
    /// Number of prediction heads; widens a next-token checkpoint (extra heads copied from head 0).
    #[arg(long)]
    pub n_future_tokens: Option<usize>,
    /// How extra heads are initialised when widening: copy | random.
    #[arg(long, default_value_t = ExtraHeadsInit::Copy)]
    pub extra_heads_init: ExtraHeadsInit,
    /// Weight dtype: f32 | bf16 | f16.
    #[arg(long, default_value_t = Precision::F32)]
    pub dtype: Precision,
    /// Device: cpu, cuda or cuda:N (cuda needs a build with `--features cuda`).
    #[arg(long, default_value_t = DeviceSpec::Cpu)]
    pub device: DeviceSpec,
}

/// How continuations are drawn (`generate`, `distill`).
#[derive(Debug, Args)]
pub struct SamplingArgs {
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Nucleus sampling: keep the most likely tokens up to this probability mass.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Draw from the k most likely tokens only (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Seed of the sampling draws.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl SamplingArgs {
    /// The sampling settings, checked: temperature ≥ 0, top-p in (0, 1].
    pub fn checked(&self) -> anyhow::Result<wmtp_host::infer::generate::Sampling> {
        anyhow::ensure!(
            self.temperature >= 0.0 && self.temperature.is_finite(),
            "--temperature must be ≥ 0"
        );
        anyhow::ensure!(
            self.top_p > 0.0 && self.top_p <= 1.0,
            "--top-p must be in (0, 1]"
        );
        Ok(wmtp_host::infer::generate::Sampling {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            seed: self.seed,
        })
    }
}

/// The tracing filter for `-v` counts (RUST_LOG, when set, wins).
pub fn log_filter(verbose: u8) -> tracing_subscriber::EnvFilter {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level))
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Launch(l) => launch(l),
        Command::Run(r) => run_training(r),
        Command::Eval(a) if a.humaneval.is_some() => eval_cmds::humaneval(&a),
        Command::Eval(a) => eval_cmds::eval_ce(&a),
        Command::Export {
            checkpoint,
            out,
            format,
        } => {
            anyhow::ensure!(
                format == "peft",
                "--format {format}: only peft is supported"
            );
            wmtp_host::checkpoint::export::export_peft_adapter(&checkpoint, &out)?;
            println!(
                "PEFT adapter written to {} (peft.PeftModel.from_pretrained, or [lora] init_from)",
                out.display()
            );
            Ok(())
        }
        Command::Merge {
            checkpoint,
            out,
            format,
        } => {
            let format = match format {
                MergeFormatArg::Meta => wmtp_host::checkpoint::export::MergeFormat::Meta,
                MergeFormatArg::Hf => wmtp_host::checkpoint::export::MergeFormat::Hf,
            };
            wmtp_host::checkpoint::export::merge_checkpoint(&checkpoint, &out, format)?;
            println!(
                "merged model written to {} (use it with --model {})",
                out.display(),
                out.display()
            );
            Ok(())
        }
        Command::Plot { run_dir } => {
            for p in wmtp_host::run::plot::plot_run(&run_dir)? {
                println!("wrote {}", p.display());
            }
            Ok(())
        }
        Command::Info(a) => model_cmds::info(&a),
        Command::Generate(a) => model_cmds::generate(&a),
        Command::Perplexity(a) => model_cmds::perplexity(&a),
        Command::Distill(a) => distill_cmd::run(&a),
        Command::Plugin(c) => plugin_cmds::run(c),
    }
}

/// `wmtp launch`: the ranks of this node, each a `wmtp` child with its rank's environment.
fn launch(l: LaunchCli) -> Result<()> {
    anyhow::ensure!(
        l.timeout_s > 0.0 && l.timeout_s.is_finite(),
        "--timeout-s must be a positive number of seconds"
    );
    wmtp_host::parallel::launch::launch(&wmtp_host::parallel::launch::LaunchSpec {
        nproc_per_node: l.nproc_per_node,
        nnodes: l.nnodes,
        node_rank: l.node_rank,
        master_addr: l.master_addr,
        master_port: l.master_port,
        timeout: std::time::Duration::from_secs_f64(l.timeout_s),
        program: std::env::current_exe()?,
        args: l.command,
    })
}

/// `wmtp run`: one training run; a run stopped by Ctrl-C exits with status 130.
fn run_training(r: RunCli) -> Result<()> {
    let mut set = r.set;
    set.extend(r.device.map(|d| format!("model.device=\"{d}\"")));
    set.extend(r.dtype.map(|d| format!("model.dtype=\"{d}\"")));
    let opts = wmtp_host::run::RunOptions {
        pipeline: r.pipeline,
        config: r.config,
        set,
        resume: r.resume,
        allow_plugin_change: r.allow_plugin_change,
        quiet: false,
    };
    let summary = wmtp_host::run::run(&opts)?;
    if summary.interrupted {
        // 128 + SIGINT, as shells report a Ctrl-C: schedulers and scripts see it did not finish
        std::process::exit(130);
    }
    Ok(())
}

/// `wmtp merge --format`: the command line's name for [`wmtp_host::checkpoint::export::MergeFormat`] (the library
/// does not depend on clap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MergeFormatArg {
    /// Meta names (wmtp's own layout).
    Meta,
    /// Hugging Face transformers layout.
    Hf,
}
