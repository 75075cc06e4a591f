//! The one table between wmtp's (Meta-style) parameter names and Hugging Face Llama's, both ways: the
//! HF reader (`load/hf.rs`) maps HF keys to ours, the HF/PEFT writer and the PEFT reader
//! (`hf_export.rs`) ours to HF's. LoRA target synonyms (`lora::HF_TARGETS`) are checked against it.

/// Whole-model tensors: (ours, HF's).
pub const GLOBAL_NAMES: [(&str, &str); 3] = [
    ("tok_embeddings.weight", "model.embed_tokens.weight"),
    ("norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// A block's modules: (ours, HF's), as name prefixes inside `layers.N.` / `model.layers.N.` (what
/// follows — `weight`, `lora_A.weight` — is the same on both sides).
pub const BLOCK_NAMES: [(&str, &str); 9] = [
    ("attention.wq.", "self_attn.q_proj."),
    ("attention.wk.", "self_attn.k_proj."),
    ("attention.wv.", "self_attn.v_proj."),
    ("attention.wo.", "self_attn.o_proj."),
    ("feed_forward.w1.", "mlp.gate_proj."),
    ("feed_forward.w2.", "mlp.down_proj."),
    ("feed_forward.w3.", "mlp.up_proj."),
    ("attention_norm.", "input_layernorm."),
    ("ffn_norm.", "post_attention_layernorm."),
];

/// HF keys that carry nothing wmtp uses (RoPE's inverse frequencies, recomputed from the config).
const HF_IGNORED_IN_BLOCK: [&str; 1] = ["self_attn.rotary_emb.inv_freq"];

/// The HF name of one of our block-or-global tensor names (`layers.3.attention.wq.weight` →
/// `model.layers.3.self_attn.q_proj.weight`; LoRA suffixes kept); None for names HF Llama has no
/// place for (the extra heads' tensors).
pub fn hf_name(ours: &str) -> Option<String> {
    if let Some((_, hf)) = GLOBAL_NAMES.iter().find(|(o, _)| *o == ours) {
        return Some((*hf).to_string());
    }
    let (i, sub) = ours.strip_prefix("layers.")?.split_once('.')?;
    let (from, to) = BLOCK_NAMES.iter().find(|(o, _)| sub.starts_with(o))?;
    Some(format!("model.layers.{i}.{to}{}", &sub[from.len()..]))
}

/// Our name for an HF key; None for keys wmtp does not use (RoPE inverse-frequency buffers) and for
/// keys outside the model's layout. A block key of a module not in the table keeps its HF spelling
/// under `layers.N.`, so the loader reports it as unknown instead of dropping it.
pub fn meta_name(hf: &str) -> Option<String> {
    if let Some((ours, _)) = GLOBAL_NAMES.iter().find(|(_, h)| *h == hf) {
        return Some((*ours).to_string());
    }
    let (i, sub) = hf.strip_prefix("model.layers.")?.split_once('.')?;
    if HF_IGNORED_IN_BLOCK.contains(&sub) {
        return None;
    }
    Some(match BLOCK_NAMES.iter().find(|(_, h)| sub.starts_with(h)) {
        Some((ours, h)) => format!("layers.{i}.{ours}{}", &sub[h.len()..]),
        None => format!("layers.{i}.{sub}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_goes_there_and_back() {
        let mut ours: Vec<String> = GLOBAL_NAMES.iter().map(|(o, _)| o.to_string()).collect();
        for (o, _) in BLOCK_NAMES {
            ours.push(format!("layers.7.{o}weight"));
            ours.push(format!("layers.7.{o}lora_B.weight"));
        }
        for o in &ours {
            let hf = hf_name(o).unwrap();
            assert_eq!(meta_name(&hf).as_deref(), Some(o.as_str()), "{o} → {hf}");
        }
        assert_eq!(
            hf_name("layers.3.attention.wq.weight").as_deref(),
            Some("model.layers.3.self_attn.q_proj.weight")
        );
        assert_eq!(hf_name("extra_heads.0.attention.wq.weight"), None);
        assert_eq!(
            meta_name("model.layers.0.self_attn.rotary_emb.inv_freq"),
            None
        );
        assert_eq!(
            meta_name("model.layers.2.mlp.odd.weight").as_deref(),
            Some("layers.2.mlp.odd.weight")
        );
    }

    #[test]
    fn lora_hf_targets_are_the_tables_linear_modules() {
        use crate::model::lora::{ALL_TARGETS, HF_TARGETS};
        for (ours, hf) in ALL_TARGETS.iter().zip(HF_TARGETS) {
            let (_, hf_prefix) = BLOCK_NAMES
                .iter()
                .find(|(o, _)| o.trim_end_matches('.').ends_with(&format!(".{ours}")))
                .unwrap();
            assert!(
                hf_prefix.trim_end_matches('.').ends_with(&format!(".{hf}")),
                "{ours} ↔ {hf}"
            );
        }
    }
}
