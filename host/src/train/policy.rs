//! The policy model of a session as step 0 trains it: loaded (or, for a launched run of a preset,
//! built of placeholders and drawn shard by shard: [`super::shard_init`]), its LoRA adapters added and
//! its trained groups switched on.

use super::config::{RunConfig, TrainingSection};
use super::shard_init;
use super::trainable::narrow_trainable;
use crate::data::Tokenizer;
use crate::formats::load::{load_model, LoadOptions, LoadedModel};
use crate::model::{ParamGroup, Transformer};
use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::path::Path;
use wmtp_plugin_host::Manifest;

/// The policy made trainable as step 0 trains it: LoRA adapters when any stage trains them (from
/// `lora.init_from` when given), the trained groups (the value head aside) switched on and narrowed to
/// `training.trainable_prefixes`.
fn prepare_policy(
    cfg: &RunConfig,
    manifest: &Manifest,
    t0: &TrainingSection,
    groups: &BTreeSet<ParamGroup>,
    model: &mut Transformer,
) -> Result<()> {
    if super::stages::any_stage_trains_lora(cfg, manifest) {
        model.add_lora(&cfg.lora, cfg.training.seed)?;
        if !cfg.lora.init_from.is_empty() {
            crate::formats::hf_export::import_peft(Path::new(&cfg.lora.init_from), model)
                .context("lora.init_from")?;
        }
    }
    let model_groups: Vec<ParamGroup> = groups
        .iter()
        .copied()
        .filter(|g| *g != ParamGroup::ValueHead)
        .collect();
    model.set_trainable_groups(&model_groups)?;
    narrow_trainable(model, &t0.trainable_prefixes)
}

/// The policy as step 0 trains it ([`prepare_policy`]), its tokenizer and source. A launched run
/// (`shard_place` = (world size, rank)) of a preset draws only the weights this rank's shards read
/// ([`shard_init`]).
pub fn build_policy(
    cfg: &RunConfig,
    manifest: &Manifest,
    t0: &TrainingSection,
    groups: &BTreeSet<ParamGroup>,
    opts: &LoadOptions,
    shard_place: Option<(usize, usize)>,
) -> Result<(Transformer, Tokenizer, String)> {
    let shard_only = shard_place.filter(|_| shard_init::shard_only_init(cfg));
    let lm = match shard_only {
        Some(_) => shard_init::placeholder_policy(cfg, opts)?,
        None => load_model(&cfg.model.path, opts)?,
    };
    let (mut model, tokenizer, source) = checked_policy(cfg, lm)?;
    prepare_policy(cfg, manifest, t0, groups, &mut model)?;
    if let Some(place) = shard_only {
        shard_init::draw_shard_weights(cfg, opts, &mut model, place)?;
    }
    Ok((model, tokenizer, source))
}

/// The loaded policy (all weights frozen), its tokenizer (the byte tokenizer for presets), checked to
/// fit the model's vocabulary, and its source.
fn checked_policy(cfg: &RunConfig, lm: LoadedModel) -> Result<(Transformer, Tokenizer, String)> {
    let tokenizer = lm.tokenizer.unwrap_or_else(Tokenizer::bytes);
    if tokenizer.vocab_size() > lm.model.args.vocab_size {
        bail!(
            "the tokenizer has {} tokens but model `{}` only {}",
            tokenizer.vocab_size(),
            cfg.model.path,
            lm.model.args.vocab_size
        );
    }
    Ok((lm.model, tokenizer, lm.source))
}
