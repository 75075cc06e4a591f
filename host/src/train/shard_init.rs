//! Shard-only random init for launched runs of a preset: each rank draws just the weights its FSDP
//! shards read, so W ranks share the drawing of one model instead of each drawing all of it (a 7B
//! preset is ~6.7·10⁹ samples).
//!
//! The policy is built of placeholders ([`crate::model::init::placeholder`]: no memory); once its
//! adapters and trainable flags are set — they decide the FSDP buckets — [`draw_shard_weights`] draws
//! the weights that overlap this rank's slices (`parallel::fsdp::names_in_shard`), each with the values
//! the whole model would have (per-tensor streams). FSDP then releases every weight. Frozen and trainable
//! weights alike (LoRA and full fine-tuning): a trainable placeholder stays a placeholder until drawn
//! (`model::Param`), not a `Var` copy of the whole weight. Reading a placeholder is an error
//! (`fsdp::shard_unit` checks), never silent zeros.

use super::config::RunConfig;
use crate::formats::load::{preset_args, LoadOptions, LoadedModel};
use crate::model::init::random_weights_where;
use crate::model::weight_map::WeightMap;
use crate::model::{Transformer, VisitParams};
use crate::parallel::fsdp::names_in_shard;
use anyhow::{anyhow, Result};

/// Whether a sharded run's policy can start as placeholders: it is a preset (random weights; a model
/// read from files is read whole).
pub fn shard_only_init(cfg: &RunConfig) -> bool {
    preset_args(&cfg.model.path, cfg.model.n_future_tokens).is_some()
}

/// The preset policy of `cfg` with every weight a placeholder (see the module doc), as `load_model`
/// would return it otherwise.
pub fn placeholder_policy(cfg: &RunConfig, opts: &LoadOptions) -> Result<LoadedModel> {
    let args = preset_args(&cfg.model.path, opts.n_future_tokens)
        .ok_or_else(|| anyhow!("model `{}` is not a preset", cfg.model.path))??;
    let weights = random_weights_where(&args, opts.seed, opts.dtype, &|_| false)?;
    let wm = WeightMap::new(weights, "placeholder init", opts.dtype, &opts.device);
    Ok(LoadedModel {
        model: Transformer::load(args, wm)?,
        tokenizer: None,
        source: cfg.model.path.clone(),
    })
}

/// Draws into `model` (a [`placeholder_policy`] with its adapters and trainable flags set) the weights
/// that rank `rank` of `world` keeps a piece of under `cfg.distributed.sharding`, seeded as the whole
/// preset would be (`opts.seed`).
pub fn draw_shard_weights(
    cfg: &RunConfig,
    opts: &LoadOptions,
    model: &mut Transformer,
    (world, rank): (usize, usize),
) -> Result<()> {
    let wanted = names_in_shard(model, cfg.distributed.sharding, (world, rank))?;
    let mut drawn =
        random_weights_where(&model.args, opts.seed, opts.dtype, &|n| wanted.contains(n))?;
    let mut res = Ok(());
    model.visit_mut("", &mut |name, p| {
        // only the wanted weights: the rest of `drawn` are placeholders, and adapters (made by
        // add_lora) are not in it
        if res.is_ok() && wanted.contains(name) {
            if let Some(t) = drawn.remove(name) {
                res = p.replace(t);
            }
        }
    });
    res
}
