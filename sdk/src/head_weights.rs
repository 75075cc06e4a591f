//! Per-head loss weights λ_k, the `head_weights` key every shipped CE pipeline declares (docs/design.md §5,
//! "Per-head loss weights"). The MTP loss becomes a λ-weighted mean over the heads that have tokens:
//!
//!   L = Σ_{k: n_k>0} λ_k · L_k / Σ_{k: n_k>0} λ_k,   L_k = Σ_{b,t} w·CE·M / n_k,
//!
//! so uniform λ (the default) is today's plain mean over heads, `[1, 0, 0, 0]` is next-token training of
//! head 0 alone, and Medusa-2-style recipes down-weight the extra heads (`[1.0, 0.1, 0.08, 0.064]`).
//! In TOML: `head_weights = [1.0, 0.1, 0.08, 0.064]` (one weight per head, head 0 first), or the decay
//! form `head_weights = { decay = 0.5 }` (λ_k = decay^k), or `[]` (uniform).

use crate::config::SettingValue;
use serde::{Deserialize, Serialize};

/// The `head_weights` setting: a list (one weight per head, head 0 first; empty = uniform) or a decay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum HeadWeights {
    /// λ_k given per head; empty means every head weighs 1.
    List(Vec<f64>),
    /// λ_k = decay^k (head 0 weighs 1).
    Decay {
        /// the ratio between consecutive heads' weights, in [0, 1]
        decay: f64,
    },
}

impl Default for HeadWeights {
    fn default() -> Self {
        HeadWeights::List(Vec::new())
    }
}

impl SettingValue for HeadWeights {}

impl HeadWeights {
    /// The weights of a model with `heads` heads, checked: one per head, finite, ≥ 0, not all 0.
    /// Errors name the `head_weights` key.
    pub fn resolve(&self, heads: usize) -> Result<Vec<f64>, String> {
        let w = match self {
            HeadWeights::List(w) if w.is_empty() => vec![1.0; heads],
            HeadWeights::List(w) if w.len() != heads => {
                return Err(format!(
                "plugin config key `head_weights` has {} weights but the model has {heads} heads \
                     (one weight per head, head 0 first)",
                w.len()
            ))
            }
            HeadWeights::List(w) => w.clone(),
            HeadWeights::Decay { decay } => {
                if !(0.0..=1.0).contains(decay) {
                    return Err(format!(
                        "plugin config key `head_weights.decay` = {decay} must be in [0, 1]"
                    ));
                }
                (0..heads).map(|k| decay.powi(k as i32)).collect()
            }
        };
        if let Some(bad) = w.iter().find(|x| !x.is_finite() || **x < 0.0) {
            return Err(format!(
                "plugin config key `head_weights`: every weight must be finite and ≥ 0, got {bad}"
            ));
        }
        if heads > 0 && w.iter().all(|&x| x == 0.0) {
            return Err("plugin config key `head_weights`: at least one weight must be > 0".into());
        }
        Ok(w)
    }

    /// Checks what can be checked before the head count is known (called from `configure`).
    pub fn check(&self) -> Result<(), String> {
        match self {
            HeadWeights::List(w) if w.is_empty() => Ok(()),
            HeadWeights::List(w) => self.resolve(w.len()).map(|_| ()),
            HeadWeights::Decay { .. } => self.resolve(1).map(|_| ()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::settings! {
        struct S {
            /// weights
            head_weights: HeadWeights = HeadWeights::default(),
        }
    }

    #[test]
    fn parses_the_three_forms_and_names_the_key_in_errors() {
        use crate::config::Settings;
        assert_eq!(
            S::parse("").unwrap().head_weights.resolve(3).unwrap(),
            [1.0; 3]
        );
        let s = S::parse("head_weights = [1, 0.1, 0.08]").unwrap();
        assert_eq!(s.head_weights.resolve(3).unwrap(), [1.0, 0.1, 0.08]);
        let s = S::parse("head_weights = { decay = 0.5 }").unwrap();
        assert_eq!(s.head_weights.resolve(4).unwrap(), [1.0, 0.5, 0.25, 0.125]);
        let keys = S::keys();
        assert_eq!(
            (keys[0].name.as_str(), keys[0].default_value.as_str()),
            ("head_weights", "[]")
        );
        for (bad, heads, says) in [
            (
                "head_weights = [1, 0.5]",
                4,
                "2 weights but the model has 4",
            ),
            ("head_weights = [1, -0.5]", 2, "≥ 0"),
            ("head_weights = [0, 0]", 2, "> 0"),
            ("head_weights = { decay = 1.5 }", 2, "head_weights.decay"),
        ] {
            let e = S::parse(bad)
                .unwrap()
                .head_weights
                .resolve(heads)
                .unwrap_err();
            assert!(e.contains(says) && e.contains("head_weights"), "{bad}: {e}");
        }
        assert!(S::parse("head_weights = { decy = 0.5 }").is_err());
        assert!(S::parse("head_weights = \"x\"").is_err());
        assert!(S::parse("head_weights = [1, -1]")
            .unwrap()
            .head_weights
            .check()
            .is_err());
    }
}
