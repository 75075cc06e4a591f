//! What a run trains: the parameter groups (`training.trainable`, else the plugin's manifest; LoRA
//! standing in for trunk and heads when on, unless `lora` is listed beside them) and their narrowing by
//! parameter-name pattern (`training.trainable_prefixes`).

use super::config::TrainingSection;
use crate::model::{ParamGroup, Transformer, VisitParams};
use anyhow::{bail, Result};
use std::collections::BTreeSet;
use wmtp_plugin_host::Manifest;

/// Freezes every trainable parameter whose name starts with none of `prefixes` (`training.
/// trainable_prefixes`; empty: nothing changes; `*` in a prefix stands for any run of characters, see
/// [`prefix_matches`]). A prefix that matches no trainable parameter is an error naming it, so a typo
/// cannot silently train nothing.
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
            if prefix_matches(prefix, name) {
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

/// Whether `pattern` matches the start of `name`, `*` standing for any run of characters (none
/// included): `extra_heads.` matches every parameter of heads 1..H−1, `*lora_` every LoRA matrix,
/// `layers.*.attention.` every attention block. Written here because the names hold no path separators
/// and only `*` is needed (a glob crate would add classes and escapes nobody asked for).
pub fn prefix_matches(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    for part in parts {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

/// The trained groups: the config's list, else the manifest's. With LoRA on, `trunk` and `heads` are
/// trained through LoRA, unless the config's `training.trainable` lists `lora` too: then they mean their
/// full weights besides the adapters (e.g. `["lora", "heads"]` with `trainable_prefixes = ["*lora_",
/// "extra_heads."]`: LoRA in the trunk and head 0, heads 1..H−1 as whole blocks). A manifest's list
/// (what the plugin can train, e.g. baseline's `lora, heads, trunk`) never asks for that. Without LoRA
/// a `lora` request means nothing.
pub fn trained_groups(t: &TrainingSection, manifest: &Manifest) -> BTreeSet<ParamGroup> {
    let wanted: Vec<ParamGroup> = if t.trainable.is_empty() {
        manifest.trains.iter().map(|g| (*g).into()).collect()
    } else {
        t.trainable.clone()
    };
    let lora = t.use_lora;
    let full_besides_lora = lora && t.trainable.contains(&ParamGroup::Lora);
    wanted
        .into_iter()
        .filter_map(|g| match g {
            ParamGroup::ValueHead => Some(g),
            ParamGroup::Lora => lora.then_some(g),
            ParamGroup::Heads | ParamGroup::Trunk if lora && !full_besides_lora => {
                Some(ParamGroup::Lora)
            }
            ParamGroup::Heads | ParamGroup::Trunk => Some(g),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{prefix_matches, trained_groups, TrainingSection};
    use crate::model::ParamGroup::{self, Heads, Lora, Trunk, ValueHead};
    use wmtp_plugin_host::{Manifest, ParamGroup as P};

    /// LoRA stands in for trunk and heads, whatever the plugin's manifest lists (baseline's says `lora,
    /// heads, trunk`); only the config's own `["lora", "heads"]` adds the heads' full weights.
    #[test]
    fn lora_replaces_trunk_and_heads_unless_the_config_lists_both() {
        let manifest = Manifest {
            name: "m".into(),
            version: "0".into(),
            description: String::new(),
            needs: vec![],
            trains: vec![P::Lora, P::Heads, P::Trunk, P::ValueHead],
            uses_ce: true,
            uses_values_grad: true,
            config_keys: vec![],
        };
        let groups = |use_lora: bool, trainable: Vec<ParamGroup>| {
            let t = TrainingSection {
                use_lora,
                trainable,
                ..Default::default()
            };
            trained_groups(&t, &manifest)
                .into_iter()
                .collect::<Vec<_>>()
        };
        assert_eq!(groups(true, vec![]), [Lora, ValueHead]);
        assert_eq!(groups(false, vec![]), [ValueHead, Heads, Trunk]);
        assert_eq!(groups(true, vec![Heads]), [Lora]);
        assert_eq!(groups(true, vec![Lora, Heads]), [Lora, Heads]);
        assert_eq!(groups(false, vec![Lora, Heads]), [Heads]);
    }

    #[test]
    fn prefixes_match_the_start_and_star_matches_any_run() {
        let lora_a = "layers.3.attention.wq.lora_A.weight";
        for (pattern, name, want) in [
            ("extra_heads.", "extra_heads.0.attention.wq.weight", true),
            ("extra_heads.", "layers.0.attention.wq.weight", false),
            ("*lora_", lora_a, true),
            ("*lora_", "layers.3.attention.wq.weight", false),
            ("layers.*.attention.", lora_a, true),
            ("layers.*.feed_forward.", lora_a, false),
            ("layers.3*", lora_a, true),
            ("*", "norm.weight", true),
            ("", "output.weight", true),
            ("output", "norm.weight", false),
            ("layers.*.wq.*_B", lora_a, false),
        ] {
            assert_eq!(prefix_matches(pattern, name), want, "{pattern} on {name}");
        }
    }
}
