//! `wmtp info` (architecture, parameter counts, memory estimate), `wmtp generate` (KV-cached continuation
//! with head 0) and `wmtp perplexity` (next-token perplexity of a text).

use super::ModelArgsCli;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::collections::BTreeMap;
use wmtp_host::formats::load::{load_model, preset_args, LoadOptions, LoadedModel};
use wmtp_host::model::activation_memory::{
    check_selective_blocks, checkpointed_blocks, describe_mode, ActivationCheckpointing,
    ActivationEstimate,
};
use wmtp_host::model::memory::{human_bytes, Counts, MemoryEstimate};
use wmtp_host::model::{LoraConfig, ParamGroup, VisitParams};
use wmtp_host::train::evaluate;

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
    /// Sequences per rank per micro-batch, for the activation estimate.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Tokens per sequence (default: the model's max_seq_len, at most 2048).
    #[arg(long)]
    pub seq: Option<usize>,
    /// Activation checkpointing of the estimate: blocks | selective | none (as
    /// `runtime.activation_checkpointing`).
    #[arg(long, default_value = "blocks")]
    pub activation_checkpointing: String,
    /// With `--activation-checkpointing selective`: how many blocks keep the selective set (as
    /// `runtime.selective_blocks`; default all).
    #[arg(long)]
    pub selective_blocks: Option<usize>,
}

/// Allocated (all, trainable) counts and the count per group of a loaded model.
type AllocatedCounts = ((u64, u64), BTreeMap<ParamGroup, u64>);

/// The model's shape, and for a model that is loaded (not a preset) its allocated counts (LoRA added
/// when `--lora`), which `info` checks against the formula.
fn shape_and_allocated_counts(
    a: &InfoArgs,
    lora: &LoraConfig,
) -> Result<(wmtp_host::model::ModelArgs, Option<AllocatedCounts>)> {
    // presets are described from their shape alone (a 7B model is never allocated for `info`)
    Ok(match preset_args(&a.model.model, a.model.n_future_tokens) {
        Some(args) => (args?, None),
        None => {
            let mut m = load(&a.model)?.model;
            if a.lora {
                m.add_lora(lora, 0)?;
            }
            let mut by_group: BTreeMap<ParamGroup, u64> = BTreeMap::new();
            m.visit("", &mut |_, p| {
                *by_group.entry(p.group()).or_default() += p.numel() as u64
            });
            // full fine-tuning trains the trunk and the heads: counted, not made trainable (that would
            // copy every weight)
            let counts = if a.lora {
                m.param_counts()
            } else {
                let get = |g| by_group.get(&g).copied().unwrap_or(0);
                (
                    by_group.values().sum(),
                    get(ParamGroup::Trunk) + get(ParamGroup::Heads),
                )
            };
            (m.args.clone(), Some((counts, by_group)))
        }
    })
}

/// `info`'s memory table: weights, masters, gradients, AdamW state, gathered units and activations per
/// rank, for full fine-tuning and LoRA.
fn print_memory_estimate(
    a: &InfoArgs,
    args: &wmtp_host::model::ModelArgs,
    lora: &LoraConfig,
) -> Result<()> {
    let c = args.param_counts();
    let bytes = candle_core::DType::from(a.model.dtype).size_in_bytes();
    let seq = a.seq.unwrap_or(args.max_seq_len.min(2048));
    let Some(mode) = ActivationCheckpointing::parse(&a.activation_checkpointing) else {
        bail!(
            "--activation-checkpointing {}: {}",
            a.activation_checkpointing,
            ActivationCheckpointing::NAMES
        );
    };
    if mode == ActivationCheckpointing::Auto {
        bail!(
            "--activation-checkpointing auto: a run resolves auto on its device (selective where that \
             fits 90% of the GPU's memory, else blocks); ask for blocks, selective or none here"
        );
    }
    if a.selective_blocks.is_some() && mode != ActivationCheckpointing::Selective {
        bail!("--selective-blocks applies only to --activation-checkpointing selective");
    }
    check_selective_blocks(args, a.selective_blocks).context("--selective-blocks")?;
    let mode_text = describe_mode(mode, a.selective_blocks, checkpointed_blocks(args));
    let acts = ActivationEstimate::with_selective_blocks(
        args,
        a.batch,
        seq,
        bytes,
        mode,
        a.selective_blocks,
        2048,
    );
    println!(
        "\nestimated training memory per rank (world size {}, weights in {}, {} × {seq} tokens per rank, activation checkpointing {mode_text}):",
        a.world_size, a.model.dtype, a.batch
    );
    println!("  {:<22}{:>14}{:>14}", "", "full FT", "LoRA");
    let lt = lora.trainable_count(args)?;
    let full = MemoryEstimate::new(
        Counts::of_policy(args, c.total(), c.total()),
        bytes,
        a.world_size,
    );
    // LoRA: the adapters beside the base weights
    let lo = MemoryEstimate::new(
        Counts::of_policy(args, c.total() + lt, lt),
        bytes,
        a.world_size,
    );
    for (name, f, l) in [
        ("weights", full.weights, lo.weights),
        ("f32 masters / shards", full.masters, lo.masters),
        ("gradients (f32)", full.grads, lo.grads),
        ("AdamW state (2×f32)", full.adam_state, lo.adam_state),
        ("gathered units", full.gathered, lo.gathered),
        ("activations (saved)", acts.saved, acts.saved),
        ("working + CUDA context", acts.working, acts.working),
        (
            "total",
            full.total() + acts.total(),
            lo.total() + acts.total(),
        ),
    ] {
        println!("  {name:<22}{:>14}{:>14}", human_bytes(f), human_bytes(l));
    }
    Ok(())
}

/// `wmtp generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    /// The model.
    pub model: ModelArgsCli,
    /// The prompt text (repeatable: each prompt is continued in turn).
    #[arg(long, required = true)]
    pub prompt: Vec<String>,
    /// Most tokens to add.
    #[arg(long, default_value_t = 32)]
    pub max_new_tokens: usize,
    #[command(flatten)]
    /// How continuations are drawn.
    pub sampling: super::SamplingArgs,
    /// Stop a continuation when its text contains this string (repeatable; the string is cut off).
    #[arg(long = "stop")]
    pub stop: Vec<String>,
    /// Recompute the whole sequence for every token (greedy only; the reference for the KV cache).
    #[arg(long)]
    pub no_cache: bool,
    /// raw (the default: continue the text as given), or wrap each prompt as an instruction the way
    /// training's `data.template` does: auto (the model's own chat template when it ships one, else
    /// ChatML for tokenizers with `<|im_start|>`, else Alpaca), model, alpaca, chatml, none.
    #[arg(long, default_value = "raw")]
    pub template: String,
    /// Self-speculative greedy decoding: heads 1..H−1 draft, head 0 verifies them in one pass (the same
    /// tokens as plain greedy decoding); prints each head's acceptance rate.
    #[arg(long, conflicts_with = "no_cache")]
    pub speculative: bool,
    /// With --speculative, which drafts a round verifies: wide (Medusa-style tree of the heads' top
    /// 1–4 tokens, 21 positions with 3 extra heads: more drafts accepted for a wider pass), chain (each
    /// extra head's top token), or the nodes as rank paths, e.g. "0;1;0,0;1,0;0,0,0".
    #[arg(long, default_value = "wide", requires = "speculative")]
    pub draft_tree: String,
    /// Prompts decoded together as one batch (left-padded); --speculative decodes one at a time.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
}

/// `--template`: `raw` (None: the prompt as given) or a `data.template` name.
pub(super) fn parse_template(s: &str) -> Result<Option<wmtp_host::data::template::Template>> {
    match s {
        "raw" => Ok(None),
        t => t
            .parse()
            .map(Some)
            .map_err(|e: String| anyhow::anyhow!("--template: {e}, or raw")),
    }
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
    /// Tokens per window (default: the model's max_seq_len); a longer text is scored by a sliding
    /// window.
    #[arg(long)]
    pub context: Option<usize>,
    /// Tokens a window moves by (default: half the context, so every token after the first window's
    /// has at least that much earlier text as context).
    #[arg(long)]
    pub stride: Option<usize>,
}

/// The model `--model` names: a preset, a GGUF file, a Meta / HF directory, or a training checkpoint
/// (`runs/…/checkpoints/step-N`: its base model with the trained adapter merged, or its full model).
pub(super) fn load(m: &ModelArgsCli) -> Result<LoadedModel> {
    let device = m.device.open()?;
    let ckpt = std::path::Path::new(&m.model);
    if wmtp_host::checkpoint::layout::is_checkpoint(ckpt) {
        let (cfg, _) = wmtp_host::checkpoint::read_meta(ckpt, &[])?;
        let mut opts = wmtp_host::train::session::load_options(&cfg, &device)?;
        opts.dtype = m.dtype.into();
        return wmtp_host::formats::checkpoint::load_trained_for_inference(
            ckpt,
            &cfg.model.path,
            &opts,
        )
        .with_context(|| format!("checkpoint {}", ckpt.display()));
    }
    let opts = LoadOptions {
        dtype: m.dtype.into(),
        device,
        n_future_tokens: m.n_future_tokens,
        extra_heads: m.extra_heads_init,
        ..Default::default()
    };
    load_model(&m.model, &opts)
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

/// `wmtp info`.
pub fn info(a: &InfoArgs) -> Result<()> {
    let lora = LoraConfig {
        rank: a.rank,
        alpha: a.alpha,
        target_modules: a.targets.split(',').map(|s| s.trim().to_string()).collect(),
        ..Default::default()
    };
    lora.validate()?;
    let (args, counted) = shape_and_allocated_counts(a, &lora)?;
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
    print_memory_estimate(a, &args, &lora)
}

/// `wmtp generate`.
pub fn generate(a: &GenerateArgs) -> Result<()> {
    use wmtp_host::infer::generate::{generate, GenerateOptions};
    let sampling = a.sampling.checked()?;
    anyhow::ensure!(
        !(a.no_cache && sampling.temperature > 0.0),
        "--no-cache decodes greedily only"
    );
    anyhow::ensure!(
        !(a.speculative && sampling.temperature > 0.0),
        "--speculative decodes greedily only (temperature 0)"
    );
    let lm = load(&a.model)?;
    let Some(tok) = &lm.tokenizer else {
        bail!(
            "model `{}` has no tokenizer (tokenizer.json, tokenizer.model or GGUF metadata)",
            a.model.model
        )
    };
    let template = parse_template(&a.template)?;
    let prompts = a
        .prompt
        .iter()
        .map(|p| match template {
            None => tok.encode(p, tok.add_bos),
            Some(t) => t.resolve(tok).encode_prompt(tok, p, ""),
        })
        .collect::<Result<Vec<_>>>()?;
    if !lm.model.device().is_cpu() && !a.no_cache {
        // warm-up outside the timing: the first decode on a GPU loads kernels and creates handles
        let warm = GenerateOptions {
            max_new: 4,
            eos: None,
            sampling: Default::default(),
            batch: 1,
        };
        generate(&lm.model, &prompts[..1], &warm, &mut |_, _| false)?;
    }
    let t0 = std::time::Instant::now();
    let (outs, spec_stats) = decode_prompts(a, &lm.model, tok, &prompts, sampling)?;
    let secs = t0.elapsed().as_secs_f64();
    let total: usize = outs.iter().map(Vec::len).sum();
    for (p, new) in a.prompt.iter().zip(&outs) {
        let mut text = tok.decode(new)?;
        if let Some(cut) = a.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
            text.truncate(cut);
        }
        println!("{p}{text}");
    }
    eprintln!(
        "{total} tokens in {secs:.2} s ({:.1} tokens/s{})",
        total as f64 / secs.max(1e-9),
        if a.no_cache {
            ", no KV cache"
        } else if a.speculative {
            ", self-speculative"
        } else {
            ""
        }
    );
    if let Some(st) = spec_stats {
        print_speculative_stats(&st, lm.model.args.n_future_tokens);
    }
    Ok(())
}

/// The new tokens of every prompt as `a` asks: recomputed without a cache, plain (batched, greedy or
/// sampled) or self-speculative (with its acceptance counts).
fn decode_prompts(
    a: &GenerateArgs,
    model: &wmtp_host::model::Transformer,
    tok: &wmtp_host::data::tokenizer::Tokenizer,
    prompts: &[Vec<u32>],
    sampling: wmtp_host::infer::generate::Sampling,
) -> Result<(
    Vec<Vec<u32>>,
    Option<wmtp_host::infer::speculative::SpeculativeStats>,
)> {
    use wmtp_host::infer::generate::{generate, greedy_continue, GenerateOptions};
    if a.no_cache {
        let outs = prompts
            .iter()
            .map(|p| {
                Ok(greedy_continue(model, p, a.max_new_tokens, tok.eos_id)?[p.len()..].to_vec())
            })
            .collect::<Result<_>>()?;
        return Ok((outs, None));
    }
    let opts = GenerateOptions {
        max_new: a.max_new_tokens,
        eos: tok.eos_id,
        sampling,
        batch: a.batch,
    };
    let stops = &a.stop;
    let mut stop = |_: usize, new: &[u32]| {
        !stops.is_empty()
            && tok
                .decode(new)
                .is_ok_and(|t| stops.iter().any(|s| t.contains(s.as_str())))
    };
    if !a.speculative {
        return Ok((generate(model, prompts, &opts, &mut stop)?, None));
    }
    let tree =
        wmtp_host::infer::draft_tree::DraftTree::parse(&a.draft_tree, model.extra_heads.len())
            .context("--draft-tree")?;
    let (outs, stats) = wmtp_host::infer::speculative::generate_speculative(
        model, prompts, &opts, &tree, &mut stop,
    )?;
    Ok((outs, Some(stats)))
}

/// The line `--speculative` ends with: tokens per pass, each extra head's acceptance, passes off the
/// top chain.
fn print_speculative_stats(st: &wmtp_host::infer::speculative::SpeculativeStats, heads: usize) {
    let accepted: Vec<String> = (1..heads)
        .map(|k| match st.acceptance(k) {
            Some(r) => format!("head {k} {:.0}%", 100.0 * r),
            None => format!("head {k} -"),
        })
        .collect();
    eprintln!(
        "speculative: {:.2} tokens per forward pass over {} passes; drafts accepted: {}; \
         {} passes accepted a draft off the top chain",
        st.tokens_per_round(),
        st.rounds,
        accepted.join(", "),
        st.off_chain
    );
}

/// `wmtp perplexity`.
pub fn perplexity(a: &PerplexityArgs) -> Result<()> {
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
    let ids = tok.encode(&text, tok.add_bos)?;
    let context = a.context.unwrap_or(lm.model.args.max_seq_len);
    let stride = a.stride.unwrap_or((context / 2).max(1));
    let r = evaluate::windowed_next_token_ce(&lm.model, &ids, context, stride)?;
    let how = if r.windows > 1 {
        format!(
            "  ({} windows of ≤ {context} tokens, stride {stride}; {} tokens scored)",
            r.windows, r.scored
        )
    } else {
        String::new()
    };
    println!(
        "tokens {}  cross-entropy {:.6} nats  perplexity {:.4}{how}",
        ids.len(),
        r.ce,
        r.ce.exp()
    );
    Ok(())
}
