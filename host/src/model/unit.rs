//! The units of the policy ([`Unit`]).

use super::Transformer;

/// One unit of the policy: what the engine runs as one piece (forward, recomputation, backward) and what
/// a parallel strategy gathers and reduces as one piece (FSDP's sharding unit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Unit {
    /// `tok_embeddings.weight`.
    Embedding,
    /// Block i of `layers` (the trunk blocks, then head 0).
    Layer(usize),
    /// Extra head j (head j + 1).
    ExtraHead(usize),
    /// The shared final norm and the output projection.
    Output,
}

impl Unit {
    /// The unit a checkpoint name belongs to (None for names outside the policy, e.g. the value head).
    pub fn of(name: &str) -> Option<Unit> {
        let index = |rest: &str| rest.split('.').next().and_then(|i| i.parse().ok());
        if name.starts_with("tok_embeddings.") {
            Some(Unit::Embedding)
        } else if let Some(rest) = name.strip_prefix("layers.") {
            index(rest).map(Unit::Layer)
        } else if let Some(rest) = name.strip_prefix("extra_heads.") {
            index(rest).map(Unit::ExtraHead)
        } else if name.starts_with("norm.") || name.starts_with("output.") {
            Some(Unit::Output)
        } else {
            None
        }
    }

    /// Head block k's unit (0 = next token, the last block of `layers`).
    pub fn head(model: &Transformer, k: usize) -> Unit {
        if k == 0 {
            Unit::Layer(model.layers.len() - 1)
        } else {
            Unit::ExtraHead(k - 1)
        }
    }

    /// The unit's name prefix (`layers.3`, `extra_heads.0`, …), for messages.
    pub fn label(self) -> String {
        match self {
            Unit::Embedding => "tok_embeddings".into(),
            Unit::Layer(i) => format!("layers.{i}"),
            Unit::ExtraHead(j) => format!("extra_heads.{j}"),
            Unit::Output => "output".into(),
        }
    }
}
