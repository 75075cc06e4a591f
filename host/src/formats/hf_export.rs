//! Interop with the Hugging Face stack: LoRA adapters in the layout `peft.PeftModel.from_pretrained` loads
//! on the HF Llama model (keys `base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`, q/k
//! rows in HF's rotate-half RoPE order, an `adapter_config.json` of PEFT's fields only), the reverse
//! (`[lora] init_from`), and merged models as an HF `config.json` + `model.safetensors`.
//!
//! An HF Llama with `num_hidden_layers` = trunk blocks + 1 computes exactly head 0 (the trunk, head 0's
//! block, the shared norm and output). The extra MTP heads have no HF counterpart: their weights (and
//! their LoRA) go beside, in `wmtp_extra_heads.safetensors` under wmtp's names, with `wmtp_config.json`
//! (head count, value head) and `value_head.safetensors`; PEFT and transformers ignore those files.
//!
//! Layout: wmtp keeps q/k rows interleaved per head ([heads, hd/2, 2]); HF groups them rotate-half
//! ([heads, 2, hd/2]). For a q/k LoRA ΔW = s·B·A, only B's rows are permuted (B_hf = P·B); A is untouched.

use super::adapter::{save_json, save_tensors, save_value_head};
use super::hf_layout::{
    permute_rotate_half, unpermute_rotate_half, WmtpExportConfig, EXTRA_HEADS_FILE,
    WMTP_CONFIG_FILE,
};
use super::hf_names::hf_name;
use crate::model::param::{ParamGroup, VisitParams};
use crate::model::{LoraConfig, Transformer, ValueHead};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

const PEFT_PREFIX: &str = "base_model.model.";
/// How many heads' rows a q/k tensor (or its LoRA B) is grouped by: n_heads for wq, n_kv_heads for wk;
/// None for any other tensor (and for LoRA A, whose rows are the rank).
fn rope_heads(ours: &str, args: &crate::model::ModelArgs) -> Option<usize> {
    let lora_a = ours.ends_with("lora_A.weight");
    if ours.contains("attention.wq.") && !lora_a {
        Some(args.n_heads)
    } else if ours.contains("attention.wk.") && !lora_a {
        Some(args.kv_heads())
    } else {
        None
    }
}

/// PEFT's `adapter_config.json` (only fields PEFT knows).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeftConfig {
    /// "LORA".
    pub peft_type: String,
    /// "CAUSAL_LM".
    pub task_type: String,
    /// Rank r.
    pub r: usize,
    /// α.
    pub lora_alpha: f64,
    /// Adapter input dropout.
    #[serde(default)]
    pub lora_dropout: f32,
    /// HF module names (`q_proj` …).
    pub target_modules: Vec<String>,
    /// α/√r scaling.
    #[serde(default)]
    pub use_rslora: bool,
    /// The base model.
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    /// "none".
    #[serde(default = "none")]
    pub bias: String,
    /// false: weights are [out, in].
    #[serde(default)]
    pub fan_in_fan_out: bool,
    /// Extra trained modules (wmtp writes none; an adapter that has some is refused on import).
    #[serde(default)]
    pub modules_to_save: Option<Vec<String>>,
    /// Which layers are adapted (wmtp: all; others are refused on import).
    #[serde(default)]
    pub layers_to_transform: Option<serde_json::Value>,
}

fn none() -> String {
    "none".into()
}

fn cpu(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_device(&Device::Cpu)?)
}

/// `model`'s parameters of `groups`, on the CPU, split into those with an HF name (renamed, q/k rows
/// rotate-half) and the extra heads' (wmtp names and layout).
fn split_for_hf(
    model: &Transformer,
    groups: &[ParamGroup],
) -> Result<(HashMap<String, Tensor>, HashMap<String, Tensor>)> {
    let (mut hf, mut extra) = (HashMap::new(), HashMap::new());
    let mut err = None;
    model.visit("", &mut |name, p| {
        if !groups.contains(&p.group()) || err.is_some() {
            return;
        }
        let hf_key = hf_name(name);
        let t = match (cpu(p.tensor()), rope_heads(name, &model.args)) {
            (Ok(t), Some(h)) if hf_key.is_some() => permute_rotate_half(&t, h),
            (t, _) => t,
        };
        match (t, hf_key) {
            (Ok(t), Some(k)) => {
                hf.insert(k, t);
            }
            (Ok(t), None) => {
                extra.insert(name.to_string(), t);
            }
            (Err(e), _) => err = Some(e),
        }
    });
    match err {
        Some(e) => Err(e),
        None => Ok((hf, extra)),
    }
}

/// The extra heads' tensors, the value head and `wmtp_config.json`: what goes beside an HF export.
fn save_beside(
    dir: &Path,
    model: &Transformer,
    extra: HashMap<String, Tensor>,
    value_head: Option<&ValueHead>,
) -> Result<()> {
    if !extra.is_empty() {
        save_tensors(&dir.join(EXTRA_HEADS_FILE), extra)?;
    }
    if let Some(vh) = value_head {
        save_value_head(dir, vh)?;
    }
    save_json(
        &dir.join(WMTP_CONFIG_FILE),
        &WmtpExportConfig {
            n_future_tokens: model.args.n_future_tokens,
            value_head: value_head.map(|v| v.config.clone()),
        },
    )
}

/// Writes `model`'s LoRA adapter as a PEFT adapter into `dir` (see the module docs), with the value head
/// when given.
pub fn export_peft(
    dir: &Path,
    model: &Transformer,
    value_head: Option<&ValueHead>,
    base_model: &str,
) -> Result<()> {
    let Some(cfg) = &model.lora else {
        bail!("the model has no LoRA adapters to export")
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let (hf, extra) = split_for_hf(model, &[ParamGroup::Lora])?;
    let peft = hf
        .into_iter()
        .map(|(k, t)| (format!("{PEFT_PREFIX}{k}"), t))
        .collect();
    save_tensors(&dir.join("adapter_model.safetensors"), peft)?;
    let targets = cfg.targets()?;
    let hf_targets = targets
        .iter()
        .map(|t| {
            let i = crate::model::lora::ALL_TARGETS
                .iter()
                .position(|a| a == t)
                .unwrap_or(0);
            crate::model::lora::HF_TARGETS[i].to_string()
        })
        .collect();
    save_json(
        &dir.join("adapter_config.json"),
        &PeftConfig {
            peft_type: "LORA".into(),
            task_type: "CAUSAL_LM".into(),
            r: cfg.rank,
            lora_alpha: cfg.alpha,
            lora_dropout: cfg.dropout,
            target_modules: hf_targets,
            use_rslora: cfg.rslora,
            base_model_name_or_path: Some(base_model.to_string()),
            bias: "none".into(),
            fan_in_fan_out: false,
            modules_to_save: None,
            layers_to_transform: None,
        },
    )?;
    save_beside(dir, model, extra, value_head)
}

/// Reads a PEFT adapter's `adapter_config.json` from `dir` as wmtp LoRA settings (refusing what wmtp
/// cannot represent: bias adapters, `modules_to_save`, a layer subset, fan-in-fan-out weights).
pub fn read_peft_config(dir: &Path) -> Result<LoraConfig> {
    let path = dir.join("adapter_config.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let c: PeftConfig =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let refuse = |what: &str| -> Result<LoraConfig> {
        bail!("{}: {what} is not supported by wmtp", path.display())
    };
    if c.peft_type != "LORA" {
        return refuse(&format!("peft_type `{}`", c.peft_type));
    }
    if c.bias != "none" {
        return refuse(&format!("bias `{}`", c.bias));
    }
    if c.fan_in_fan_out {
        return refuse("fan_in_fan_out");
    }
    if c.modules_to_save.as_ref().is_some_and(|m| !m.is_empty()) {
        return refuse("modules_to_save");
    }
    if c.layers_to_transform.as_ref().is_some_and(|l| !l.is_null()) {
        return refuse("layers_to_transform");
    }
    let lora = LoraConfig {
        rank: c.r,
        alpha: c.lora_alpha,
        dropout: c.lora_dropout,
        target_modules: c.target_modules,
        rslora: c.use_rslora,
        init_from: String::new(),
    };
    lora.targets()
        .with_context(|| format!("{}: target_modules", path.display()))?;
    Ok(lora)
}

/// Errors (naming `dir`) unless the adapter's LoRA settings `theirs` are the model's `ours`.
fn check_same_lora(dir: &Path, theirs: &LoraConfig, ours: &LoraConfig) -> Result<()> {
    if theirs.rank != ours.rank
        || theirs.alpha != ours.alpha
        || theirs.rslora != ours.rslora
        || theirs.targets()? != ours.targets()?
    {
        bail!(
            "{}: the adapter (r {}, α {}, rslora {}, targets {:?}) differs from [lora] (r {}, α {}, rslora {}, targets {:?})",
            dir.display(),
            theirs.rank,
            theirs.alpha,
            theirs.rslora,
            theirs.targets()?,
            ours.rank,
            ours.alpha,
            ours.rslora,
            ours.targets()?
        );
    }
    Ok(())
}

/// Sets `model`'s LoRA tensors (the model has LoRA with the same settings) from the PEFT adapter in `dir`:
/// every trunk and head-0 LoRA tensor must be in it with the right shape; extra heads' LoRA come from
/// `wmtp_extra_heads.safetensors` when there is one (an adapter trained on a plain model has none: those
/// keep their initial values, B = 0).
pub fn import_peft(dir: &Path, model: &mut Transformer) -> Result<()> {
    let Some(ours) = model.lora.clone() else {
        bail!("the model has no LoRA to load {} into", dir.display())
    };
    check_same_lora(dir, &read_peft_config(dir)?, &ours)?;
    let file = dir.join("adapter_model.safetensors");
    let mut peft = super::meta::read_safetensors(&file)?;
    let extra_file = dir.join(EXTRA_HEADS_FILE);
    let mut extra = if extra_file.exists() {
        super::meta::read_safetensors(&extra_file)?
    } else {
        HashMap::new()
    };
    let args = model.args.clone();
    let mut err: Option<anyhow::Error> = None;
    model.visit_mut("", &mut |name, p| {
        if p.group() != ParamGroup::Lora || err.is_some() {
            return;
        }
        let got = match hf_name(name) {
            Some(hf) => match peft.remove(&format!("{PEFT_PREFIX}{hf}")) {
                Some(t) => Some(t),
                None => {
                    err = Some(anyhow::anyhow!(
                        "{}: no tensor {PEFT_PREFIX}{hf}",
                        file.display()
                    ));
                    return;
                }
            },
            None => extra.remove(name),
        };
        let Some(t) = got else { return };
        // HF-named tensors come in HF's rotate-half rows; the extra heads' in wmtp's layout already
        let t = match rope_heads(name, &args) {
            Some(h) if hf_name(name).is_some() => unpermute_rotate_half(&t, h),
            _ => Ok(t),
        };
        let set = t.and_then(|t| {
            if t.dims() != p.tensor().dims() {
                bail!(
                    "{name}: shape {:?} in the adapter, {:?} in the model",
                    t.dims(),
                    p.tensor().dims()
                );
            }
            let t = t
                .to_dtype(p.tensor().dtype())?
                .to_device(p.tensor().device())?;
            p.set_value(t)
        });
        if let Err(e) = set {
            err = Some(e);
        }
    });
    if let Some(e) = err {
        return Err(e.context(format!("loading PEFT adapter {}", dir.display())));
    }
    if let Some(k) = peft.keys().next() {
        bail!(
            "{}: {k} (and {} more) not in the model (another base model?)",
            file.display(),
            peft.len() - 1
        );
    }
    Ok(())
}

/// Writes `model` (LoRA merged) as an HF Llama directory: `config.json` and `model.safetensors` (head 0's
/// model, q/k rotate-half), the extra heads in `wmtp_extra_heads.safetensors`, `wmtp_config.json`, and
/// the value head when given.
pub fn save_hf_merged(
    dir: &Path,
    model: &Transformer,
    value_head: Option<&ValueHead>,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut merged = model.clone();
    merged.set_lora_merged(true)?;
    let (hf, extra) = split_for_hf(&merged, &[ParamGroup::Trunk, ParamGroup::Heads])?;
    let dtype = hf.values().next().map(|t| t.dtype());
    save_tensors(&dir.join("model.safetensors"), hf)?;
    let a = &model.args;
    let torch_dtype = match dtype {
        Some(candle_core::DType::BF16) => "bfloat16",
        Some(candle_core::DType::F16) => "float16",
        _ => "float32",
    };
    save_json(
        &dir.join("config.json"),
        &serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": a.dim,
            "intermediate_size": a.hidden_dim(),
            "num_hidden_layers": model.layers.len(),
            "num_attention_heads": a.n_heads,
            "num_key_value_heads": a.kv_heads(),
            "vocab_size": a.vocab_size,
            "rms_norm_eps": a.norm_eps,
            "rope_theta": a.rope_theta,
            "max_position_embeddings": a.max_seq_len,
            "hidden_act": "silu",
            "tie_word_embeddings": false,
            "attention_bias": false,
            "mlp_bias": false,
            "torch_dtype": torch_dtype,
        }),
    )?;
    save_beside(dir, model, extra, value_head)
}
