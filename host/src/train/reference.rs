//! The frozen reference model for pipelines that need reference losses (Rho-1). Either a model the
//! config names, or — by default — a short baseline stage: the initial model trained for
//! `reference.baseline_steps` steps with the plain MTP loss on the training data's correct samples, LoRA
//! merged, cached on disk (keyed by everything that determines it) and reused by later runs. It is thus a
//! model that has seen the data, so the excess loss CE_policy − CE_reference marks tokens the data
//! teaches and the policy has not learnt yet — not the policy compared with itself.

use super::config::RunConfig;
use super::grads::Grads;
use super::optim::{AdamW, AdamWConfig, GroupSettings, Schedule};
use super::step::{accumulate, apply, Models, NativeBaseline};
use crate::data::batcher::{make_items, Batcher, Sampling};
use crate::data::dataset::encode_all;
use crate::data::Tokenizer;
use crate::model::load::{load_model, LoadOptions};
use crate::model::{ParamGroup, Transformer};
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::path::PathBuf;

/// Where automatic reference stages are cached.
pub fn reference_cache_dir() -> Option<PathBuf> {
    crate::plugin::runtime::default_cache_dir()
        .and_then(|p| p.parent().map(|q| q.join("reference")))
}

/// The reference model for `cfg` (frozen, LoRA merged).
pub fn reference_model(cfg: &RunConfig, opts: &LoadOptions) -> Result<Transformer> {
    if !cfg.reference.model.is_empty() {
        let r = LoadOptions {
            n_future_tokens: None,
            ..opts.clone()
        };
        return Ok(load_model(&cfg.reference.model, &r)
            .with_context(|| "loading reference.model")?
            .model);
    }
    let key = format!(
        "{}|{:?}|{}|{}|{}|{:?}|{}|{}|{}|{}|ref-v1",
        cfg.model.path,
        cfg.model.n_future_tokens,
        cfg.data.train,
        cfg.reference.baseline_steps,
        cfg.training.seed,
        cfg.lora,
        cfg.training.use_lora,
        cfg.training.lr,
        cfg.training.batch_size,
        cfg.data.max_length
    );
    let dir = reference_cache_dir()
        .map(|d| d.join(format!("{:016x}", crate::model::transformer::fnv1a(&key))));
    if let Some(d) = &dir {
        if d.join("params.json").exists() {
            if let Ok(lm) = load_model(d.to_str().unwrap_or_default(), opts) {
                eprintln!("reference: cached baseline stage {}", d.display());
                return Ok(lm.model);
            }
        }
    }
    eprintln!(
        "reference: training a {}-step baseline stage (cached for later runs)",
        cfg.reference.baseline_steps
    );
    let lm = load_model(&cfg.model.path, opts)?;
    let tokenizer = lm.tokenizer.unwrap_or_else(Tokenizer::bytes);
    let mut model = lm.model;
    if cfg.training.use_lora {
        model.add_lora(&cfg.lora, cfg.training.seed ^ 0x7265)?;
    } else {
        model.set_trainable_groups(&[ParamGroup::Trunk, ParamGroup::Heads])?;
    }
    let rows = super::session::dataset_rows(&cfg.data.train)?;
    let (samples, _) = encode_all(&tokenizer, &rows, cfg.data.max_length)?;
    let mut batcher = Batcher::new(
        make_items(samples, Sampling::CorrectOnly, 1, cfg.training.seed)?,
        cfg.training.batch_size,
        cfg.training.seed ^ 0x7265,
        0,
        1,
    )?;
    let gs = GroupSettings {
        lr: cfg.training.lr,
        weight_decay: cfg.training.weight_decay,
    };
    let groups = HashMap::from([
        (ParamGroup::Lora, gs),
        (ParamGroup::Heads, gs),
        (ParamGroup::Trunk, gs),
    ]);
    let steps = cfg.reference.baseline_steps.max(1);
    let mut opt = AdamW::new(
        AdamWConfig::default(),
        groups,
        Schedule {
            total_steps: steps,
            warmup_ratio: 0.05,
            min_lr_ratio: 0.1,
        },
    );
    let mut w = NativeBaseline;
    let mut grads = Grads::default();
    let pad = tokenizer.eos_id.unwrap_or(0);
    for step in 0..steps {
        let mut rep = {
            let m = Models {
                model: &model,
                value_head: None,
                reference: None,
                critic: None,
                chunk_rows: cfg.training.chunk_rows,
            };
            accumulate(
                &m,
                &mut w,
                &mut batcher,
                1,
                step,
                cfg.training.seed,
                pad,
                &mut grads,
            )?
        };
        apply(
            &mut model,
            None,
            &mut w,
            &mut opt,
            &mut grads,
            cfg.training.max_grad_norm,
            &mut rep,
        )?;
    }
    match &dir {
        Some(d) => {
            let tmp = d.with_extension("tmp");
            let _ = std::fs::remove_dir_all(&tmp);
            crate::model::adapter::save_full(&tmp, &model, None)?;
            let _ = std::fs::remove_dir_all(d);
            std::fs::rename(&tmp, d)
                .with_context(|| format!("caching the reference in {}", d.display()))?;
            Ok(load_model(d.to_str().unwrap_or_default(), opts)?.model)
        }
        None => {
            model.set_lora_merged(true)?;
            model.set_trainable_groups(&[])?;
            Ok(model)
        }
    }
}
