//! What a run trains: the parameter groups (`training.trainable`, else the plugin's manifest; LoRA
//! standing in for trunk and heads when on) and their narrowing by parameter-name prefix
//! (`training.trainable_prefixes`).

use super::config::TrainingSection;
use crate::model::{ParamGroup, Transformer, VisitParams};
use anyhow::{bail, Result};
use std::collections::BTreeSet;
use wmtp_plugin_host::Manifest;

/// Freezes every trainable parameter whose name starts with none of `prefixes` (`training.
/// trainable_prefixes`; empty: nothing changes). A prefix that matches no trainable parameter is an error
/// naming it, so a typo cannot silently train nothing.
pub fn narrow_trainable(model: &mut Transformer, prefixes: &[String]) -> Result<()> {
    if prefixes.is_empty() {
        return Ok(());
    }
    let mut hits = vec![0usize; prefixes.len()];
    let mut result = Ok(());
    model.visit_mut("", &mut |name, p| {
        if !p.is_trainable() {
            return;
        }
        let mut keep = false;
        for (i, prefix) in prefixes.iter().enumerate() {
            if name.starts_with(prefix.as_str()) {
                hits[i] += 1;
                keep = true;
            }
        }
        if !keep {
            if let Err(e) = p.set_trainable(false) {
                result = Err(e.context(format!("parameter {name}")));
            }
        }
    });
    result?;
    if let Some((prefix, _)) = prefixes.iter().zip(&hits).find(|(_, &n)| n == 0) {
        bail!(
            "training.trainable_prefixes: `{prefix}` matches no trained parameter (names start with \
             tok_embeddings, layers.N., extra_heads.N., norm, output; trained groups: training.trainable)"
        );
    }
    Ok(())
}

/// The trained groups: the config's list, else the manifest's; with LoRA on, trunk and heads are trained
/// through LoRA, and without it a `lora` request means nothing.
pub fn trained_groups(t: &TrainingSection, manifest: &Manifest) -> BTreeSet<ParamGroup> {
    let wanted: Vec<ParamGroup> = if t.trainable.is_empty() {
        manifest.trains.iter().map(|g| (*g).into()).collect()
    } else {
        t.trainable.clone()
    };
    let lora = t.use_lora;
    wanted
        .into_iter()
        .filter_map(|g| match g {
            ParamGroup::ValueHead => Some(g),
            ParamGroup::Lora => lora.then_some(g),
            ParamGroup::Heads | ParamGroup::Trunk if lora => Some(ParamGroup::Lora),
            ParamGroup::Heads | ParamGroup::Trunk => Some(g),
        })
        .collect()
}
