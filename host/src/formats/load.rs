//! Loading models: a preset name, a Meta directory (`params.json` + `consolidated*.pth` or safetensors),
//! an HF-LLaMA directory (`config.json` + safetensors), or a `.gguf` file. Next-token sources (H = 1) can
//! be widened to H heads, the extra heads initialised as copies of head 0 (or randomly).

use super::{gguf, hf, meta};
use crate::data::Tokenizer;
use crate::model::init::random_block;
use crate::model::weight_map::WeightMap;
use crate::model::{ModelArgs, Transformer};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// How heads that the checkpoint does not have are initialised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExtraHeadsInit {
    /// Copies of the head-0 block (the model starts predicting token t+1 with every head).
    #[default]
    Copy,
    /// Fresh random blocks (N(0, 0.02²) weights, unit norms), seeded.
    Random,
}

impl std::str::FromStr for ExtraHeadsInit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "copy" => Ok(ExtraHeadsInit::Copy),
            "random" => Ok(ExtraHeadsInit::Random),
            _ => Err(format!("unknown extra-heads init `{s}` (copy, random)")),
        }
    }
}

impl std::fmt::Display for ExtraHeadsInit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ExtraHeadsInit::Copy => "copy",
            ExtraHeadsInit::Random => "random",
        })
    }
}

/// Options for [`load_model`].
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Run dtype of the weights.
    pub dtype: DType,
    /// Device to load onto.
    pub device: Device,
    /// Number of heads wanted; None keeps the checkpoint's.
    pub n_future_tokens: Option<usize>,
    /// Initialisation of heads the checkpoint lacks.
    pub extra_heads: ExtraHeadsInit,
    /// Seed for random initialisation (presets, random heads).
    pub seed: u64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            dtype: DType::F32,
            device: Device::Cpu,
            n_future_tokens: None,
            extra_heads: ExtraHeadsInit::Copy,
            seed: 0,
        }
    }
}

/// A loaded model with its tokenizer (when the source has one) and the id it was loaded from.
#[derive(Debug)]
pub struct LoadedModel {
    /// The model, all weights frozen.
    pub model: Transformer,
    /// Tokenizer found with the model.
    pub tokenizer: Option<Tokenizer>,
    /// The preset name or path it came from (the adapter's `base_model_name_or_path`).
    pub source: String,
}

/// The shape of preset `spec` with `n_future_tokens` heads (extra heads become extra blocks, the trunk
/// keeps its depth); None when `spec` is not a preset or names an existing path (a path wins).
pub fn preset_args(spec: &str, n_future_tokens: Option<usize>) -> Option<Result<ModelArgs>> {
    let mut args = ModelArgs::preset(spec).filter(|_| !Path::new(spec).exists())?;
    if let Some(h) = n_future_tokens {
        args.n_layers = args.n_layers - args.n_future_tokens + h;
        args.n_future_tokens = h;
    }
    Some(args.validate().map(|_| args))
}

/// Loads a model from a preset name or a path (see the module doc).
pub fn load_model(spec: &str, opts: &LoadOptions) -> Result<LoadedModel> {
    let path = Path::new(spec);
    let (args, tensors, tokenizer) = if let Some(args) = preset_args(spec, opts.n_future_tokens) {
        let model = Transformer::random(args?, opts.seed, opts.dtype, &opts.device)?;
        return Ok(LoadedModel {
            model,
            tokenizer: None,
            source: spec.to_string(),
        });
    } else if !path.exists() {
        bail!(
            "model `{spec}`: no such file or directory, and not a preset ({:?})",
            ModelArgs::PRESETS
        );
    } else if path.is_file() && spec.ends_with(".gguf") {
        let (a, t, tok) = gguf::read_gguf(path)?;
        (a, t, Some(tok))
    } else if path.is_dir() && path.join("params.json").exists() {
        let (a, t) = meta::read_meta_dir(path)?;
        (a, t, dir_tokenizer(path)?)
    } else if path.is_dir() && path.join("config.json").exists() {
        let (a, t) = hf::read_hf_dir(path)?;
        (a, t, dir_tokenizer(path)?)
    } else {
        bail!("model `{spec}`: expected a .gguf file, or a directory with params.json (Meta) or config.json (HF)");
    };
    let (args, tensors) =
        widen_heads(args, tensors, opts).with_context(|| format!("model `{spec}`"))?;
    let wm = WeightMap::new(tensors, spec.to_string(), opts.dtype, &opts.device);
    let model = Transformer::load(args, wm)?;
    if let Some(tok) = &tokenizer {
        if tok.vocab_size() > model.args.vocab_size {
            bail!(
                "model `{spec}`: tokenizer has {} tokens, the model only {}",
                tok.vocab_size(),
                model.args.vocab_size
            );
        }
    }
    Ok(LoadedModel {
        model,
        tokenizer,
        source: spec.to_string(),
    })
}

/// The tokenizer of model `spec` without its weights: a GGUF's metadata, a model folder's tokenizer
/// files; None for presets (the byte tokenizer) and folders without one.
pub fn load_tokenizer(spec: &str) -> Result<Option<Tokenizer>> {
    let path = Path::new(spec);
    if path.is_file() && spec.ends_with(".gguf") {
        return gguf::read_gguf_tokenizer(path).map(Some);
    }
    if path.is_dir() {
        return dir_tokenizer(path);
    }
    Ok(None)
}

/// The tokenizer stored beside a checkpoint: `tokenizer.json`, else SentencePiece `tokenizer.model`.
fn dir_tokenizer(dir: &Path) -> Result<Option<Tokenizer>> {
    let json = dir.join("tokenizer.json");
    let spm = dir.join("tokenizer.model");
    let config = hf_tokenizer_config(dir)?;
    let mut tok = if json.exists() {
        let mut tok = Tokenizer::from_file(&json, None, None)?;
        // BOS/EOS as tokenizer_config.json names them, else the usual spellings from_file found
        let named = |k: &str| match &config[k] {
            serde_json::Value::String(s) => tok.token_id(s),
            serde_json::Value::Object(o) => tok.token_id(o.get("content")?.as_str()?),
            _ => None,
        };
        let (bos, eos) = (named("bos_token"), named("eos_token"));
        tok.bos_id = bos.or(tok.bos_id);
        tok.eos_id = eos.or(tok.eos_id);
        if let Some(add) = config["add_bos_token"].as_bool() {
            tok.add_bos = add;
        }
        tok
    } else if spm.exists() {
        Tokenizer::from_sentencepiece_model(&spm)?
    } else {
        return Ok(None);
    };
    tok.set_chat_template_source(hf_chat_template(dir, &config)?);
    Ok(Some(tok))
}

/// A HF `tokenizer_config.json` in `dir` (JSON null when there is none).
fn hf_tokenizer_config(dir: &Path) -> Result<serde_json::Value> {
    let cfg = dir.join("tokenizer_config.json");
    if !cfg.exists() {
        return Ok(serde_json::Value::Null);
    }
    let text =
        std::fs::read_to_string(&cfg).with_context(|| format!("reading {}", cfg.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", cfg.display()))
}

/// The chat template of `config` (a `tokenizer_config.json`: a string, or a list of named templates of
/// which `default` is taken), else of `dir`'s `chat_template.jinja`; None when there is neither.
fn hf_chat_template(dir: &Path, config: &serde_json::Value) -> Result<Option<String>> {
    match &config["chat_template"] {
        serde_json::Value::String(t) => return Ok(Some(t.clone())),
        serde_json::Value::Array(named) => {
            let default = named
                .iter()
                .find(|t| t["name"] == "default")
                .and_then(|t| t["template"].as_str());
            return Ok(default.map(str::to_string));
        }
        _ => {}
    }
    let jinja = dir.join("chat_template.jinja");
    if !jinja.exists() {
        return Ok(None);
    }
    std::fs::read_to_string(&jinja)
        .map(Some)
        .with_context(|| format!("reading {}", jinja.display()))
}

/// Turns an H = 1 checkpoint into an H-head one: head 0 stays the last block of `layers`, heads 1..H−1
/// become `extra_heads.{j}` (copies of head 0, or random).
fn widen_heads(
    mut args: ModelArgs,
    mut t: HashMap<String, Tensor>,
    opts: &LoadOptions,
) -> Result<(ModelArgs, HashMap<String, Tensor>)> {
    let Some(h) = opts.n_future_tokens.filter(|&h| h != args.n_future_tokens) else {
        return Ok((args, t));
    };
    if args.n_future_tokens != 1 {
        bail!(
            "the checkpoint has {} heads; only a next-token (H = 1) model can be widened to {h}",
            args.n_future_tokens
        );
    }
    if h == 0 {
        bail!("n_future_tokens must be at least 1");
    }
    let head0 = format!("layers.{}.", args.n_trunk());
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed);
    for j in 0..h - 1 {
        let prefix = format!("extra_heads.{j}.");
        match opts.extra_heads {
            ExtraHeadsInit::Copy => {
                let copies: Vec<_> = t
                    .iter()
                    .filter_map(|(k, v)| {
                        k.strip_prefix(&head0)
                            .map(|s| (format!("{prefix}{s}"), v.clone()))
                    })
                    .collect();
                t.extend(copies);
            }
            ExtraHeadsInit::Random => t.extend(random_block(&args, &prefix, &mut rng)?),
        }
    }
    args.n_layers += h - 1;
    args.n_future_tokens = h;
    Ok((args, t))
}
