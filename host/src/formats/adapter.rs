//! Saving and loading: LoRA adapters in PEFT's layout (`adapter_model.safetensors` with keys
//! `base_model.model.<layer>.lora_A.weight`, and `adapter_config.json` with the FULL target list, the
//! rsLoRA flag, the base model id and our format version), the value head alongside
//! (`value_head.safetensors`), the base weights a LoRA run also trains in full (`trainable = ["lora",
//! "heads"]`: [`TRAINED_WEIGHTS_FILE`], Meta names, like PEFT's `modules_to_save`), and full checkpoints (`params.json` + `model.safetensors`, Meta key names,
//! LoRA merged in) that the Meta loader reads back. Files are written to a temporary name, then renamed.

use crate::model::param::{restore_params, ParamGroup, VisitParams};
use crate::model::{LoraConfig, Transformer, ValueHead, ValueHeadConfig};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

/// Version of wmtp's adapter layout; bumped on incompatible changes.
pub const ADAPTER_FORMAT_VERSION: u32 = 1;
const KEY_PREFIX: &str = "base_model.model.";
/// Beside the adapter: the base weights (trunk or head blocks, Meta names) that the run trained in full
/// alongside the LoRA matrices; absent when it trained only LoRA (and the value head).
pub const TRAINED_WEIGHTS_FILE: &str = "wmtp_trained_weights.safetensors";

/// `adapter_config.json`: PEFT's LoRA fields plus wmtp's own (prefixed `wmtp_`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterConfig {
    /// Always "LORA".
    pub peft_type: String,
    /// Always "CAUSAL_LM".
    pub task_type: String,
    /// Rank r.
    pub r: usize,
    /// α.
    pub lora_alpha: f64,
    /// Adapter input dropout.
    pub lora_dropout: f32,
    /// Every targeted layer name, expanded (never `all-linear`).
    pub target_modules: Vec<String>,
    /// α/√r scaling.
    pub use_rslora: bool,
    /// The model the adapter was trained on (preset name or path).
    pub base_model_name_or_path: String,
    /// Always "none" (no bias adapters).
    pub bias: String,
    /// wmtp adapter layout version.
    pub wmtp_format_version: u32,
    /// Heads of the model the adapter belongs to.
    pub wmtp_n_future_tokens: usize,
    /// The value head saved alongside, if any.
    #[serde(default)]
    pub wmtp_value_head: Option<ValueHeadConfig>,
}

impl AdapterConfig {
    /// The LoRA settings it describes.
    pub fn lora_config(&self) -> LoraConfig {
        LoraConfig {
            rank: self.r,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            target_modules: self.target_modules.clone(),
            rslora: self.use_rslora,
            init_from: String::new(),
        }
    }
}

/// Writes `bytes` to `path` atomically (temporary file in the same folder, then rename).
pub fn write_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    write(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// Writes `tensors` to a safetensors file atomically, readable by all like any other file wmtp writes
/// (the safetensors writer creates its files owner-only, 0600).
pub fn save_tensors(path: &Path, tensors: HashMap<String, Tensor>) -> Result<()> {
    write_atomic(path, |tmp| {
        candle_core::safetensors::save(&tensors, tmp)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o644))?;
        }
        Ok(())
    })
}

/// Writes `value` as pretty JSON atomically.
pub(crate) fn save_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    write_atomic(path, |tmp| Ok(std::fs::write(tmp, text)?))
}

/// Writes `dir/value_head.safetensors` with keys `value_head.{i}.weight|bias`.
pub(crate) fn save_value_head(dir: &Path, vh: &ValueHead) -> Result<()> {
    let t = vh
        .named_params()
        .into_iter()
        .map(|(n, p)| (format!("value_head.{n}"), p.tensor().clone()))
        .collect();
    save_tensors(&dir.join("value_head.safetensors"), t)
}

/// Saves the LoRA adapter (and the value head, when given) into `dir`.
pub fn save_adapter(
    dir: &Path,
    model: &Transformer,
    value_head: Option<&ValueHead>,
    base_model: &str,
) -> Result<()> {
    let Some(cfg) = &model.lora else {
        bail!("the model has no LoRA adapters to save")
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tensors = HashMap::new();
    model.visit("", &mut |name, p| {
        if p.group() == ParamGroup::Lora {
            tensors.insert(format!("{KEY_PREFIX}{name}"), p.tensor().clone());
        }
    });
    save_tensors(&dir.join("adapter_model.safetensors"), tensors)?;
    let full = trained_base_weights(model);
    if !full.is_empty() {
        save_tensors(&dir.join(TRAINED_WEIGHTS_FILE), full)?;
    }
    if let Some(vh) = value_head {
        save_value_head(dir, vh)?;
    }
    let config = AdapterConfig {
        peft_type: "LORA".into(),
        task_type: "CAUSAL_LM".into(),
        r: cfg.rank,
        lora_alpha: cfg.alpha,
        lora_dropout: cfg.dropout,
        target_modules: cfg.targets()?.iter().map(|s| s.to_string()).collect(),
        use_rslora: cfg.rslora,
        base_model_name_or_path: base_model.to_string(),
        bias: "none".into(),
        wmtp_format_version: ADAPTER_FORMAT_VERSION,
        wmtp_n_future_tokens: model.args.n_future_tokens,
        wmtp_value_head: value_head.map(|v| v.config.clone()),
    };
    save_json(&dir.join("adapter_config.json"), &config)
}

/// The base weights (trunk and heads groups) that are trainable beside the LoRA matrices, by Meta name.
fn trained_base_weights(model: &Transformer) -> HashMap<String, Tensor> {
    let mut out = HashMap::new();
    model.visit("", &mut |name, p| {
        if p.is_trainable() && matches!(p.group(), ParamGroup::Trunk | ParamGroup::Heads) {
            out.insert(name.to_string(), p.tensor().clone());
        }
    });
    out
}

/// Sets the base weights saved in `dir`'s [`TRAINED_WEIGHTS_FILE`] (when there is one) into `model`:
/// every tensor must name a parameter of the model with its shape.
pub fn load_trained_base_weights(dir: &Path, model: &mut Transformer) -> Result<()> {
    let file = dir.join(TRAINED_WEIGHTS_FILE);
    if !file.exists() {
        return Ok(());
    }
    let mut tensors = super::meta::read_safetensors(&file)?;
    let mut err = None;
    model.visit_mut("", &mut |name, p| {
        if err.is_some() {
            return;
        }
        if let Some(t) = tensors.remove(name) {
            if let Err(e) = p.set_loaded(t) {
                err = Some(e.context(format!("tensor `{name}`")));
            }
        }
    });
    if let Some(e) = err {
        return Err(e.context(format!("loading {}", file.display())));
    }
    if !tensors.is_empty() {
        let extra: BTreeSet<_> = tensors.keys().collect();
        bail!("{}: tensors not in the model: {extra:?}", file.display());
    }
    Ok(())
}

/// Reads `adapter_config.json` of `dir`, checking the format version.
pub fn read_adapter_config(dir: &Path) -> Result<AdapterConfig> {
    let path = dir.join("adapter_config.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let cfg: AdapterConfig =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    if cfg.peft_type != "LORA" {
        bail!(
            "{}: peft_type `{}` is not LORA",
            path.display(),
            cfg.peft_type
        );
    }
    if cfg.wmtp_format_version > ADAPTER_FORMAT_VERSION {
        bail!(
            "{}: adapter format {} is newer than this wmtp reads ({ADAPTER_FORMAT_VERSION})",
            path.display(),
            cfg.wmtp_format_version
        );
    }
    Ok(cfg)
}

/// Adds the adapter saved in `dir` to `model` (which must not have LoRA yet), sets the base weights
/// trained beside it, and returns the value head saved with it. Every adapter tensor must be present with the right shape, and nothing else.
pub fn load_adapter(dir: &Path, model: &mut Transformer) -> Result<Option<ValueHead>> {
    let cfg = read_adapter_config(dir)?;
    if cfg.wmtp_n_future_tokens != model.args.n_future_tokens {
        bail!(
            "{}: adapter is for a model with {} heads, this one has {}",
            dir.display(),
            cfg.wmtp_n_future_tokens,
            model.args.n_future_tokens
        );
    }
    let file = dir.join("adapter_model.safetensors");
    let mut tensors = super::meta::read_safetensors(&file)?;
    model
        .add_lora(&cfg.lora_config(), 0)
        .with_context(|| format!("{}: bad LoRA settings", dir.display()))?;
    restore_params(model, "", &[ParamGroup::Lora], &mut tensors, &|n| {
        format!("{KEY_PREFIX}{n}")
    })
    .with_context(|| format!("loading adapter {}", file.display()))?;
    if !tensors.is_empty() {
        let extra: BTreeSet<_> = tensors.keys().collect();
        bail!(
            "{}: tensors not in the model (wrong targets or model?): {extra:?}",
            file.display()
        );
    }
    load_trained_base_weights(dir, model)?;
    let Some(vcfg) = &cfg.wmtp_value_head else {
        return Ok(None);
    };
    read_value_head(&dir.join("value_head.safetensors"), vcfg, model).map(Some)
}

/// The value head saved in `file` (a `value_head.safetensors`), built as `cfg` for `model`'s width and
/// device.
pub fn read_value_head(
    file: &Path,
    cfg: &ValueHeadConfig,
    model: &Transformer,
) -> Result<ValueHead> {
    let mut t = super::meta::read_safetensors(file)?;
    let mut vh = ValueHead::new(cfg, model.args.dim, 0, model.device())?;
    restore_params(
        &mut vh,
        "value_head.",
        &[ParamGroup::ValueHead],
        &mut t,
        &|n| n.to_string(),
    )
    .with_context(|| format!("loading {}", file.display()))?;
    Ok(vh)
}

/// Saves a full checkpoint (`params.json` + `model.safetensors`, LoRA merged into the base weights;
/// `value_head.safetensors` when given) that `load_model` reads back as a Meta directory.
pub fn save_full(dir: &Path, model: &Transformer, value_head: Option<&ValueHead>) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut merged = model.clone();
    merged.set_lora_merged(true)?;
    let mut tensors = HashMap::new();
    merged.visit("", &mut |name, p| {
        if p.group() != ParamGroup::Lora {
            tensors.insert(
                name.to_string(),
                p.tensor()
                    .to_device(&Device::Cpu)
                    .unwrap_or_else(|_| p.tensor().clone()),
            );
        }
    });
    save_tensors(&dir.join("model.safetensors"), tensors)?;
    save_json(&dir.join("params.json"), &model.args)?;
    if let Some(vh) = value_head {
        save_value_head(dir, vh)?;
    }
    Ok(())
}
