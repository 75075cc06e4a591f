//! Inverse-frequency token weights (contract 0.2: the batch's token ids and the vocabulary). Each
//! target token x counts by how often it has been trained on so far: with c(x) the number of trained
//! (target-mask 1) positions holding x in the training batches of earlier optimizer steps,
//!     w(x) = (1 + c(x))^(−α) · s(x),   s(x) = `whitespace_weight` if x's piece is whitespace only, else 1,
//! and head k's loss is the w-weighted mean of its CE: L_k = Σ w(x[b,t+k+1])·CE[b,t,k]·M / Σ w·M,
//! L = the mean over heads with tokens (λ-weighted with `head_weights`). The weights depend on the
//! tokens only, so ∂L/∂CE = w·M / Σ w·M. Counts grow in `after_step` (a step's batches never see
//! their own counts, so weighing is deterministic) and are the plugin's checkpointed state. With several
//! ranks each rank counts the tokens it trains on (the weights of ranks differ by their data).
use wmtp_sdk::*;

settings! {
    pub struct InverseFrequencySettings {
        /// exponent α of (1 + count)^−α (0: uniform weights)
        alpha: f64 = 0.5,
        /// extra factor for targets whose piece is whitespace only (indentation, newlines)
        whitespace_weight: f64 = 1.0,
        /// per-head loss weights λ, head 0 first ([] uniform, or { decay = 0.5 })
        head_weights: HeadWeights = HeadWeights::default(),
    }
}

/// The plugin: settings, the vocabulary's whitespace pieces, committed counts and this step's.
#[derive(Default)]
pub struct InverseFrequency {
    s: InverseFrequencySettings,
    /// Token ids whose piece is whitespace only (from the vocabulary at configure).
    whitespace: Vec<bool>,
    /// c(x): trained positions per token id before the current step.
    counts: Vec<f64>,
    /// Trained positions per token id seen in the current step's training batches.
    pending: Vec<f64>,
}

/// State tag of the counts (see [`wmtp_sdk::state`]).
const TAG: &[u8; 4] = b"ifq1";

/// Whether a vocabulary piece is whitespace only, in any tokenizer's spelling (byte-level BPE `Ġ`
/// space, `Ċ` newline, `ĉ` tab; SentencePiece `▁`; byte pieces `<0x20>`, `<0x0A>`, `<0x09>`).
pub fn is_whitespace_piece(piece: &str) -> bool {
    let bytes = ["<0x20>", "<0x0A>", "<0x09>", "<0x0D>"];
    !piece.is_empty()
        && (bytes.contains(&piece)
            || piece
                .chars()
                .all(|c| c.is_whitespace() || matches!(c, 'Ġ' | 'Ċ' | 'ĉ' | 'č' | '▁')))
}

fn grow(v: &mut Vec<f64>, id: usize) {
    if v.len() <= id {
        v.resize(id + 1, 0.0);
    }
}

impl InverseFrequency {
    /// w(x) (see the crate doc).
    fn weight(&self, x: u32) -> f64 {
        let x = x as usize;
        let c = self.counts.get(x).copied().unwrap_or(0.0);
        let s = if self.whitespace.get(x).copied().unwrap_or(false) {
            self.s.whitespace_weight
        } else {
            1.0
        };
        (1.0 + c).powf(-self.s.alpha) * s
    }
}

impl Pipeline for InverseFrequency {
    type Settings = InverseFrequencySettings;
    fn manifest() -> Manifest {
        ManifestBuilder::new("inverse_frequency", env!("CARGO_PKG_VERSION"))
            .describe("MTP CE with rarely trained target tokens weighted up: (1 + count)^−α")
            .needs(&[InputKind::Tokens])
            .build()
    }
    fn configure(&mut self, s: InverseFrequencySettings) -> Result<(), String> {
        check_range("alpha", s.alpha, 0.0, 4.0)?;
        check_range("whitespace_weight", s.whitespace_weight, 0.0, 100.0)?;
        s.head_weights.check()?;
        self.whitespace = vocabulary()
            .iter()
            .map(|p| is_whitespace_piece(p))
            .collect();
        self.s = s;
        Ok(())
    }
    fn weigh(&mut self, batch: &Batch, train: bool) -> Result<Coefficients, String> {
        let lambda = self.s.head_weights.resolve(batch.heads as usize)?;
        let v = BatchView::new(batch)?.with_head_weights(&lambda)?;
        let x = v.tokens()?;
        if train {
            for (i, &id) in x.iter().enumerate() {
                if batch.target_mask[i] != 0 {
                    grow(&mut self.pending, id as usize);
                    self.pending[id as usize] += 1.0;
                }
            }
        }
        let w = |b, t, k| v.target_token(b, t, k).map_or(0.0, |x| self.weight(x));
        let mut denominators = vec![0.0; v.h];
        for b in 0..v.b {
            for t in 0..v.t {
                for (k, d) in denominators.iter_mut().enumerate() {
                    if v.valid(b, t, k) {
                        *d += w(b, t, k);
                    }
                }
            }
        }
        let (ce, loss) = weighted_ce_with_denominators(&v, &denominators, w);
        let distinct = self.counts.iter().filter(|&&c| c > 0.0).count();
        Ok(Coefficients::of_ce(ce, loss).metric("distinct_tokens_counted", distinct as f64))
    }
    fn after_step(&mut self, _step: u64) -> Result<(), String> {
        for (id, n) in std::mem::take(&mut self.pending).into_iter().enumerate() {
            if n > 0.0 {
                grow(&mut self.counts, id);
                self.counts[id] += n;
            }
        }
        Ok(())
    }
    fn save_state(&self) -> Vec<u8> {
        state::encode(TAG, &self.counts)
    }
    fn load_state(&mut self, bytes: &[u8]) -> Result<(), String> {
        let n = bytes.len().saturating_sub(4) / 8;
        self.counts = state::decode(TAG, bytes, n)?;
        self.pending.clear();
        Ok(())
    }
}

export_pipeline!(InverseFrequency);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_pieces_in_every_spelling() {
        for p in ["Ġ", "ĠĠĠ", "Ċ", "ĊĠĠ", "ĉ", "▁", "▁▁", " ", "\n", "<0x0A>"] {
            assert!(is_whitespace_piece(p), "{p:?}");
        }
        for p in ["", "Ġdef", "▁def", "x", "<0x41>", ":"] {
            assert!(!is_whitespace_piece(p), "{p:?}");
        }
    }
}
