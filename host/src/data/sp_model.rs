//! SentencePiece encoding as the reference library does it, for `tokenizer.model` files: the model type
//! and normaliser settings read from the protobuf (`TrainerSpec.model_type`, `byte_fallback`;
//! `NormalizerSpec.name`, `add_dummy_prefix`, `remove_extra_whitespaces`, `escape_whitespaces`), then
//! - normalisation: the rule `identity` exactly (Llama-2's); other rules (e.g. `nmt_nfkc`, whose
//!   precompiled character map is not applied) are used as identity, with a warning;
//!   extra whitespace removed (leading, trailing, runs of spaces → one); a dummy `▁` prefix; spaces as `▁`;
//! - BPE models (Llama-2's): characters as symbols, repeatedly merging the adjacent pair whose
//!   concatenation is a vocabulary piece of the highest score (leftmost on ties);
//! - Unigram models: the Viterbi segmentation of the pieces' log probabilities (the `tokenizers` crate's
//!   Unigram, whose lattice follows the reference);
//! - pieces not in the vocabulary: their UTF-8 bytes as `<0xXX>` pieces with byte fallback, else `<unk>`;
//!   user-defined pieces are matched whole first.
//!
//! Decoding joins the pieces, turns byte pieces back into bytes, `▁` into spaces, and drops the dummy
//! prefix's space. Checked id for id against the `sentencepiece` package (tests/sentencepiece_exact.rs).

use super::sentencepiece::{fields, Piece};
use anyhow::{anyhow, bail, Result};
use std::collections::{BinaryHeap, HashMap};

/// `TrainerSpec.model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpModelType {
    /// Viterbi over piece scores.
    Unigram,
    /// Score-ordered merges.
    Bpe,
}

/// The normaliser settings of `NormalizerSpec`.
#[derive(Debug, Clone, PartialEq)]
pub struct SpNormalizer {
    /// The rule name (`identity`, `nmt_nfkc`, …).
    pub name: String,
    /// Prepend `▁` to the text.
    pub add_dummy_prefix: bool,
    /// Drop leading and trailing spaces and collapse runs of spaces.
    pub remove_extra_whitespaces: bool,
    /// Spaces as `▁`.
    pub escape_whitespaces: bool,
}

/// A SentencePiece model: pieces, type, byte fallback and normaliser.
pub struct SpModel {
    /// The vocabulary in id order.
    pub pieces: Vec<Piece>,
    /// BPE or Unigram.
    pub model_type: SpModelType,
    /// Unknown characters as byte pieces.
    pub byte_fallback: bool,
    /// How text is normalised.
    pub normalizer: SpNormalizer,
    ids: HashMap<String, u32>,
    unk: u32,
    user_defined: Vec<(String, u32)>,
    unigram: Option<tokenizers::models::unigram::Unigram>,
}

const SPACE: char = '▁';

impl SpModel {
    /// Parses a serialised `ModelProto`.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let pieces = super::sentencepiece::parse_model_proto(bytes)?;
        let (mut model_type, mut byte_fallback) = (1u64, false);
        let mut normalizer = SpNormalizer {
            name: "nmt_nfkc".into(),
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            escape_whitespaces: true,
        };
        fields(bytes, |field, payload, _| {
            match field {
                2 => fields(payload, |f, _, v| {
                    match f {
                        3 => model_type = v,
                        35 => byte_fallback = v != 0,
                        _ => {}
                    }
                    Ok(())
                })?,
                3 => fields(payload, |f, s, v| {
                    match f {
                        1 => normalizer.name = String::from_utf8(s.to_vec())?,
                        3 => normalizer.add_dummy_prefix = v != 0,
                        4 => normalizer.remove_extra_whitespaces = v != 0,
                        5 => normalizer.escape_whitespaces = v != 0,
                        _ => {}
                    }
                    Ok(())
                })?,
                _ => {}
            }
            Ok(())
        })?;
        let model_type = match model_type {
            1 => SpModelType::Unigram,
            2 => SpModelType::Bpe,
            t => bail!("SentencePiece model_type {t} (WORD = 3, CHAR = 4) is not supported"),
        };
        if normalizer.name != "identity" {
            tracing::warn!(
                "SentencePiece normaliser `{}` is applied as identity (its character map is not read): ids may differ from the reference on text it would change",
                normalizer.name
            );
        }
        Self::from_parts(pieces, model_type, byte_fallback, normalizer, false)
    }

    /// A model from its parts (e.g. a GGUF `llama` vocabulary: pieces, scores and types, no protobuf).
    /// `match_control`: control pieces (type 3, e.g. `<s>`) written in the text are matched whole like
    /// user-defined ones — what llama.cpp and HF tokenizers do with special tokens; the `sentencepiece`
    /// library does not.
    pub fn from_parts(
        pieces: Vec<Piece>,
        model_type: SpModelType,
        byte_fallback: bool,
        normalizer: SpNormalizer,
        match_control: bool,
    ) -> Result<Self> {
        let ids: HashMap<String, u32> = pieces
            .iter()
            .enumerate()
            .filter(|(_, p)| p.kind != 5)
            .map(|(i, p)| (p.piece.clone(), i as u32))
            .collect();
        let unk = pieces.iter().position(|p| p.kind == 2).unwrap_or(0) as u32;
        let mut user_defined: Vec<(String, u32)> = pieces
            .iter()
            .enumerate()
            .filter(|(_, p)| p.kind == 4 || (match_control && p.kind == 3 && !p.piece.is_empty()))
            .map(|(i, p)| (p.piece.clone(), i as u32))
            .collect();
        // longest first, so the longest user-defined piece wins
        user_defined.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
        let unigram = match model_type {
            SpModelType::Unigram => {
                // control, unused and byte pieces never come out of the segmentation: a score no path takes
                let vocab = pieces
                    .iter()
                    .map(|p| {
                        let usable = p.kind == 1 || p.kind == 4;
                        (p.piece.clone(), if usable { p.score as f64 } else { -1e9 })
                    })
                    .collect();
                Some(
                    tokenizers::models::unigram::Unigram::from(vocab, Some(unk as usize), false)
                        .map_err(|e| anyhow!("building the Unigram lattice: {e}"))?,
                )
            }
            SpModelType::Bpe => None,
        };
        Ok(SpModel {
            pieces,
            model_type,
            byte_fallback,
            normalizer,
            ids,
            unk,
            user_defined,
            unigram,
        })
    }

    /// The id of `piece`, if the vocabulary has it (unused pieces excluded).
    pub fn piece_id(&self, piece: &str) -> Option<u32> {
        self.ids.get(piece).copied()
    }

    /// The normalised text: extra whitespace removed, the dummy prefix, spaces as `▁`.
    pub fn normalize(&self, text: &str) -> String {
        let n = &self.normalizer;
        let mut s = if n.remove_extra_whitespaces {
            let mut out = String::with_capacity(text.len());
            for c in text.trim_matches(' ').chars() {
                if !(c == ' ' && out.ends_with(' ')) {
                    out.push(c);
                }
            }
            out
        } else {
            text.to_string()
        };
        if s.is_empty() {
            return s;
        }
        if n.add_dummy_prefix {
            s.insert(0, ' ');
        }
        if n.escape_whitespaces {
            s = s.replace(' ', &SPACE.to_string());
        }
        s
    }

    /// Token ids of `text` (no BOS/EOS).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let norm = self.normalize(text);
        let mut out = Vec::new();
        // user-defined pieces split the text; the rest is segmented by the model
        let mut rest = norm.as_str();
        let mut plain = String::new();
        while !rest.is_empty() {
            if let Some((p, id)) = self.user_defined.iter().find(|(p, _)| rest.starts_with(p)) {
                self.segment(&plain, &mut out)?;
                plain.clear();
                out.push(*id);
                rest = &rest[p.len()..];
            } else {
                let c = rest.chars().next().unwrap_or(' ');
                plain.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
        self.segment(&plain, &mut out)?;
        Ok(out)
    }

    /// Appends the ids of normalised text `s` (no user-defined pieces in it).
    fn segment(&self, s: &str, out: &mut Vec<u32>) -> Result<()> {
        if s.is_empty() {
            return Ok(());
        }
        let pieces: Vec<String> = match (&self.unigram, self.model_type) {
            (Some(u), SpModelType::Unigram) => {
                use tokenizers::Model;
                u.tokenize(s)
                    .map_err(|e| anyhow!("Unigram segmentation: {e}"))?
                    .into_iter()
                    .map(|t| t.value)
                    .collect()
            }
            _ => self.bpe_pieces(s),
        };
        for p in pieces {
            match self.ids.get(&p) {
                Some(&id) if self.pieces[id as usize].kind != 2 => out.push(id),
                _ if self.byte_fallback => {
                    for b in p.bytes() {
                        out.push(
                            self.piece_id(&format!("<0x{b:02X}>"))
                                .ok_or_else(|| anyhow!("byte piece <0x{b:02X}> missing"))?,
                        );
                    }
                }
                _ => out.push(self.unk),
            }
        }
        Ok(())
    }

    /// Score of a piece the BPE may form: normal (and user-defined) pieces only.
    fn merge_score(&self, piece: &str) -> Option<f32> {
        let &id = self.ids.get(piece)?;
        let p = &self.pieces[id as usize];
        (p.kind == 1 || p.kind == 4).then_some(p.score)
    }

    /// BPE: characters merged pairwise, best-scoring merge first (leftmost on ties).
    fn bpe_pieces(&self, s: &str) -> Vec<String> {
        // symbols as a linked list over the characters
        let mut sym: Vec<Option<String>> = s.chars().map(|c| Some(c.to_string())).collect();
        let n = sym.len();
        let mut prev: Vec<Option<usize>> = (0..n).map(|i| i.checked_sub(1)).collect();
        let mut next: Vec<Option<usize>> = (0..n).map(|i| (i + 1 < n).then_some(i + 1)).collect();
        // max-heap on (score, −left); entries carry the merged text to detect stale ones
        #[derive(PartialEq)]
        struct Cand(f32, usize, usize, String);
        impl Eq for Cand {}
        impl PartialOrd for Cand {
            fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(o))
            }
        }
        impl Ord for Cand {
            fn cmp(&self, o: &Self) -> std::cmp::Ordering {
                self.0.total_cmp(&o.0).then_with(|| o.1.cmp(&self.1))
            }
        }
        let mut heap = BinaryHeap::new();
        let push = |heap: &mut BinaryHeap<Cand>, sym: &[Option<String>], l: usize, r: usize| {
            if let (Some(a), Some(b)) = (&sym[l], &sym[r]) {
                let m = format!("{a}{b}");
                if let Some(score) = self.merge_score(&m) {
                    heap.push(Cand(score, l, r, m));
                }
            }
        };
        for i in 0..n.saturating_sub(1) {
            push(&mut heap, &sym, i, i + 1);
        }
        while let Some(Cand(_, l, r, m)) = heap.pop() {
            // stale: a side was merged away or changed since
            let fresh = next[l] == Some(r)
                && match (&sym[l], &sym[r]) {
                    (Some(a), Some(b)) => a.len() + b.len() == m.len() && m.starts_with(a.as_str()),
                    _ => false,
                };
            if !fresh {
                continue;
            }
            sym[l] = Some(m);
            sym[r] = None;
            next[l] = next[r];
            if let Some(nr) = next[r] {
                prev[nr] = Some(l);
            }
            if let Some(p) = prev[l] {
                push(&mut heap, &sym, p, l);
            }
            if let Some(nx) = next[l] {
                push(&mut heap, &sym, l, nx);
            }
        }
        sym.into_iter().flatten().collect()
    }

    /// Text of `ids`: pieces joined, byte pieces as bytes, `▁` as spaces, the dummy prefix's space
    /// dropped; control and unknown pieces skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            let Some(p) = self.pieces.get(id as usize) else {
                continue;
            };
            match p.kind {
                6 => {
                    if let Some(b) = p
                        .piece
                        .strip_prefix("<0x")
                        .and_then(|h| h.strip_suffix('>'))
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                    {
                        bytes.push(b);
                    }
                }
                2 | 3 | 5 => {}
                _ => bytes.extend(p.piece.replace(SPACE, " ").bytes()),
            }
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        match (self.normalizer.add_dummy_prefix, text.strip_prefix(' ')) {
            (true, Some(t)) => t.to_string(),
            _ => text,
        }
    }
}
