//! Tokenizers: from a HF `tokenizer.json` (the tokenizers crate), from GGUF metadata (byte-level BPE
//! `gpt2` vocabularies, and SentencePiece `llama` vocabularies), and from Meta's SentencePiece
//! `tokenizer.model` (its protobuf read here, see `sentencepiece.rs`).
//!
//! A `tokenizer.model` is run exactly as the `sentencepiece` library runs it (`sp_model.rs`: BPE or
//! Unigram per the model, its normaliser settings, byte fallback). A GGUF `llama` vocabulary (pieces,
//! scores and types; no model type or normaliser) is run as llama.cpp runs it: SentencePiece BPE over the
//! scores (`sp_model.rs`), byte fallback when it has byte pieces, `▁` for spaces with one in front
//! (`tokenizer.ggml.add_space_prefix`, default true), other whitespace kept, and control tokens written
//! in the text matched whole.

use super::sentencepiece::Piece;
use super::sp_model::{SpModel, SpModelType, SpNormalizer};
use anyhow::{anyhow, bail, Context, Result};
use candle_core::quantized::gguf_file;
use std::path::Path;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::AddedToken;

/// A tokenizer with the model's BOS/EOS ids.
pub struct Tokenizer {
    /// The HF tokenizer; None for the built-in byte tokenizer and SentencePiece models.
    inner: Option<tokenizers::Tokenizer>,
    /// A SentencePiece `tokenizer.model`, run as the reference library does.
    sp: Option<super::sp_model::SpModel>,
    /// Beginning-of-sequence id, added in front of every sample.
    pub bos_id: Option<u32>,
    /// End-of-sequence id, appended to every trained sample.
    pub eos_id: Option<u32>,
    /// Whether the model's own tokenizer puts BOS in front of a plain text (GGUF
    /// `tokenizer.ggml.add_bos_token`, HF `tokenizer_config.json` `add_bos_token`; true when neither
    /// says): what raw prompts (`wmtp generate`) and scored texts (`wmtp perplexity`) get, as
    /// llama.cpp and transformers encode them. Training samples always start with BOS (design.md §7).
    pub add_bos: bool,
    /// The model's chat template (Jinja source: GGUF `tokenizer.chat_template`, HF
    /// `tokenizer_config.json`), when it ships one.
    chat_template_source: Option<String>,
    /// That template compiled, on first use ([`Tokenizer::chat_template`]): once per tokenizer, not
    /// once per rendered row.
    chat_template:
        std::sync::OnceLock<std::result::Result<super::chat_template::ChatTemplate, String>>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tokenizer(vocab {}, bos {:?}, eos {:?})",
            self.vocab_size(),
            self.bos_id,
            self.eos_id
        )
    }
}

impl Tokenizer {
    /// Loads `tokenizer.json`; BOS/EOS come from the arguments, else from the usual special-token
    /// spellings (`<s>`/`</s>`, `<|endoftext|>`, `<|begin_of_text|>`/`<|end_of_text|>`).
    pub fn from_file(path: &Path, bos_id: Option<u32>, eos_id: Option<u32>) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| anyhow!("reading tokenizer {}: {e}", path.display()))?;
        let find = |names: &[&str]| names.iter().find_map(|n| inner.token_to_id(n));
        let bos_id = bos_id.or_else(|| find(&["<s>", "<|begin_of_text|>", "<|endoftext|>"]));
        let eos_id = eos_id.or_else(|| find(&["</s>", "<|end_of_text|>", "<|endoftext|>"]));
        Ok(Tokenizer {
            sp: None,
            inner: Some(inner),
            bos_id,
            eos_id,
            add_bos: true,
            chat_template_source: None,
            chat_template: Default::default(),
        })
    }

    /// Builds the tokenizer stored in a GGUF file's metadata (`tokenizer.ggml.*`).
    pub fn from_gguf(content: &gguf_file::Content, source: &str) -> Result<Self> {
        let md = &content.metadata;
        let get = |k: &str| required(md, k, source);
        let model = get("tokenizer.ggml.model")?.to_string()?.clone();
        let tokens: Vec<String> = get("tokenizer.ggml.tokens")?
            .to_vec()?
            .iter()
            .map(|v| v.to_string().cloned())
            .collect::<candle_core::Result<_>>()
            .with_context(|| format!("{source}: tokenizer.ggml.tokens"))?;
        let types: Vec<i32> = match md.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()?
                .iter()
                .map(|t| t.to_i32())
                .collect::<candle_core::Result<_>>()?,
            None => vec![1; tokens.len()],
        };
        let id = |k: &str| md.get(k).and_then(|v| v.to_u32().ok());
        let (bos_id, eos_id) = (
            id("tokenizer.ggml.bos_token_id"),
            id("tokenizer.ggml.eos_token_id"),
        );
        // llama.cpp's default: BOS in front unless the file says not
        let add_bos = !matches!(
            md.get("tokenizer.ggml.add_bos_token"),
            Some(gguf_file::Value::Bool(false))
        );
        let chat_template = md
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok().cloned());
        let mut inner = match model.as_str() {
            "gpt2" => gguf_byte_level_bpe(md, &tokens, source)?,
            "llama" => {
                return Ok(Tokenizer {
                    sp: Some(gguf_sentencepiece(md, &tokens, &types, source)?),
                    inner: None,
                    bos_id,
                    eos_id,
                    add_bos,
                    chat_template_source: chat_template,
                    chat_template: Default::default(),
                });
            }
            other => bail!(
                "{source}: unsupported GGUF tokenizer model `{other}` (supported: gpt2, llama)"
            ),
        };
        // control / user-defined tokens (type 3 / 4) are matched whole, never split
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, &t)| t == 3 || t == 4)
            .map(|(s, _)| AddedToken::from(s.clone(), true))
            .collect();
        inner
            .add_special_tokens(specials)
            .map_err(|e| anyhow!("{source}: adding special tokens: {e}"))?;
        Ok(Tokenizer {
            sp: None,
            inner: Some(inner),
            bos_id,
            eos_id,
            add_bos,
            chat_template_source: chat_template,
            chat_template: Default::default(),
        })
    }

    /// Loads Meta's SentencePiece `tokenizer.model` (BOS 1 / EOS 2 unless the model says otherwise).
    pub fn from_sentencepiece_model(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let sp = super::sp_model::SpModel::parse(&bytes)
            .with_context(|| format!("parsing SentencePiece model {}", path.display()))?;
        Ok(Tokenizer {
            inner: None,
            bos_id: sp.piece_id("<s>"),
            eos_id: sp.piece_id("</s>"),
            add_bos: true,
            sp: Some(sp),
            chat_template_source: None,
            chat_template: Default::default(),
        })
    }

    /// The built-in byte tokenizer (for presets without a tokenizer, e.g. `tiny`): ids 0..255 are the
    /// UTF-8 bytes, 256 is BOS, 257 is EOS (vocabulary 258).
    pub fn bytes() -> Self {
        Tokenizer {
            inner: None,
            sp: None,
            bos_id: Some(256),
            eos_id: Some(257),
            add_bos: true,
            chat_template_source: None,
            chat_template: Default::default(),
        }
    }

    /// Writes the tokenizer as a HF `tokenizer.json` (e.g. to ship one built from GGUF metadata).
    pub fn save(&self, path: &Path) -> Result<()> {
        let Some(inner) = &self.inner else {
            bail!("the byte tokenizer and SentencePiece models have no tokenizer.json form")
        };
        inner
            .save(path, false)
            .map_err(|e| anyhow!("writing tokenizer {}: {e}", path.display()))
    }

    /// Whether it can be written as a `tokenizer.json` (HF and GGUF-built tokenizers; not the byte
    /// tokenizer nor a SentencePiece model).
    pub fn has_json_form(&self) -> bool {
        self.inner.is_some()
    }

    /// Writes the tokenizer as Hugging Face expects it in a model folder: `tokenizer.json` and
    /// `tokenizer_config.json` (BOS, EOS, the chat template, `model_max_length`), so `wmtp generate
    /// --model DIR` and transformers' `AutoTokenizer.from_pretrained(DIR)` both read it. SentencePiece
    /// models copy no file here (an error); the byte tokenizer has none.
    pub fn save_hf_files(&self, dir: &Path, model_max_length: usize) -> Result<()> {
        self.save(&dir.join("tokenizer.json"))?;
        let Some(inner) = self.inner.as_ref() else {
            bail!("this tokenizer has no tokenizer.json form");
        };
        let text = |id: Option<u32>| id.and_then(|i| inner.id_to_token(i));
        let mut cfg = serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "clean_up_tokenization_spaces": false,
            "model_max_length": model_max_length,
        });
        if let Some(b) = text(self.bos_id) {
            cfg["bos_token"] = b.into();
        }
        if let Some(e) = text(self.eos_id) {
            cfg["eos_token"] = e.into();
        }
        if let Some(t) = &self.chat_template_source {
            cfg["chat_template"] = t.clone().into();
        }
        cfg["add_bos_token"] = self.add_bos.into();
        let path = dir.join("tokenizer_config.json");
        std::fs::write(&path, serde_json::to_string_pretty(&cfg)? + "\n")
            .with_context(|| format!("writing {}", path.display()))
    }

    /// The model's chat template source (None when the model ships none).
    pub fn chat_template_source(&self) -> Option<&str> {
        self.chat_template_source.as_deref()
    }

    /// Sets (or clears) the chat template source, e.g. from a model folder's `tokenizer_config.json`.
    pub fn set_chat_template_source(&mut self, source: Option<String>) {
        self.chat_template_source = source;
        self.chat_template = Default::default();
    }

    /// The model's chat template compiled (on the first call; None when the model ships none; an error
    /// when it does not parse).
    pub fn chat_template(&self) -> Result<Option<&super::chat_template::ChatTemplate>> {
        let Some(source) = &self.chat_template_source else {
            return Ok(None);
        };
        let compiled = self.chat_template.get_or_init(|| {
            let text = |id: Option<u32>| {
                id.and_then(|i| self.inner.as_ref()?.id_to_token(i))
                    .unwrap_or_default()
            };
            super::chat_template::ChatTemplate::new(source, &text(self.bos_id), &text(self.eos_id))
                .map_err(|e| format!("{e:#}"))
        });
        compiled.as_ref().map(Some).map_err(|e| anyhow!("{e}"))
    }

    /// The id of token `piece` (a special token such as `<|im_start|>` included), if the vocabulary has it.
    pub fn token_id(&self, piece: &str) -> Option<u32> {
        if let Some(sp) = &self.sp {
            return sp.piece_id(piece);
        }
        self.inner.as_ref()?.token_to_id(piece)
    }

    /// Every token's piece by id, as the vocabulary spells it (`Ġdef` in byte-level BPE, `▁def` in
    /// SentencePiece; the built-in byte tokenizer's bytes as `<0xXX>` and its BOS/EOS as `<s>`/`</s>`):
    /// what a pipeline plugin's `vocabulary` import returns. An id the vocabulary skips gets "".
    pub fn pieces(&self) -> Vec<String> {
        if let Some(sp) = &self.sp {
            return sp.pieces.iter().map(|p| p.piece.clone()).collect();
        }
        match &self.inner {
            Some(t) => (0..self.vocab_size() as u32)
                .map(|id| t.id_to_token(id).unwrap_or_default())
                .collect(),
            None => (0..256)
                .map(|b| format!("<0x{b:02X}>"))
                .chain(["<s>".to_string(), "</s>".to_string()])
                .collect(),
        }
    }

    /// Vocabulary size, special tokens included.
    pub fn vocab_size(&self) -> usize {
        if let Some(sp) = &self.sp {
            return sp.pieces.len();
        }
        self.inner.as_ref().map_or(258, |t| t.get_vocab_size(true))
    }

    /// Token ids of `text`, with BOS in front when `add_bos`.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(text.len() + 1);
        if add_bos {
            if let Some(b) = self.bos_id {
                ids.push(b);
            }
        }
        if let Some(sp) = &self.sp {
            ids.extend(sp.encode(text)?);
            return Ok(ids);
        }
        match &self.inner {
            Some(t) => {
                let enc = t
                    .encode(text, false)
                    .map_err(|e| anyhow!("tokenizing: {e}"))?;
                ids.extend_from_slice(enc.get_ids());
            }
            None => ids.extend(text.bytes().map(u32::from)),
        }
        Ok(ids)
    }

    /// Text of `ids` (special tokens dropped).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        if let Some(sp) = &self.sp {
            return Ok(sp.decode(ids));
        }
        match &self.inner {
            Some(t) => t
                .decode(ids, true)
                .map_err(|e| anyhow!("detokenizing: {e}")),
            None => Ok(String::from_utf8_lossy(
                &ids.iter()
                    .filter(|&&i| i < 256)
                    .map(|&i| i as u8)
                    .collect::<Vec<_>>(),
            )
            .into_owned()),
        }
    }
}

/// GGUF metadata, by key.
type GgufMetadata = std::collections::HashMap<String, gguf_file::Value>;

/// The metadata value of `key`, or an error naming `source` and the key.
fn required<'m>(md: &'m GgufMetadata, key: &str, source: &str) -> Result<&'m gguf_file::Value> {
    md.get(key)
        .ok_or_else(|| anyhow!("{source}: GGUF metadata lacks `{key}`"))
}

/// A GGUF `gpt2` vocabulary (`tokenizer.ggml.tokens` + `merges`) as a byte-level BPE tokenizer.
fn gguf_byte_level_bpe(
    md: &GgufMetadata,
    tokens: &[String],
    source: &str,
) -> Result<tokenizers::Tokenizer> {
    let get = |k: &str| required(md, k, source);
    let merges: Vec<(String, String)> = get("tokenizer.ggml.merges")?
        .to_vec()?
        .iter()
        .map(|m| {
            let s = m.to_string()?;
            s.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| candle_core::Error::Msg(format!("bad merge `{s}`")))
        })
        .collect::<candle_core::Result<_>>()
        .with_context(|| format!("{source}: tokenizer.ggml.merges"))?;
    let vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = BPE::new(vocab, merges);
    let mut tk = tokenizers::Tokenizer::new(bpe);
    tk.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tk.with_decoder(Some(ByteLevel::default()));
    Ok(tk)
}

/// A GGUF `llama` vocabulary (pieces, scores, token types) as llama.cpp's SentencePiece tokenizer.
fn gguf_sentencepiece(
    md: &GgufMetadata,
    tokens: &[String],
    types: &[i32],
    source: &str,
) -> Result<SpModel> {
    let id = |k: &str| md.get(k).and_then(|v| v.to_u32().ok());
    let scores: Vec<f32> = match md.get("tokenizer.ggml.scores") {
        Some(v) => v
            .to_vec()?
            .iter()
            .map(|s| s.to_f32())
            .collect::<candle_core::Result<_>>()?,
        None => vec![0.0; tokens.len()],
    };
    if scores.len() != tokens.len() || types.len() != tokens.len() {
        bail!(
            "{source}: {} tokens but {} scores and {} token types",
            tokens.len(),
            scores.len(),
            types.len()
        );
    }
    let mut pieces: Vec<Piece> = tokens
        .iter()
        .zip(&scores)
        .zip(types)
        .map(|((t, &score), &kind)| Piece {
            piece: t.clone(),
            score,
            kind,
        })
        .collect();
    // files without token types still name their unknown token and have byte pieces
    if let Some(p) = id("tokenizer.ggml.unknown_token_id").and_then(|u| pieces.get_mut(u as usize))
    {
        p.kind = 2;
    }
    let byte_fallback = types.contains(&6) || tokens.iter().any(|t| t == "<0x00>");
    let add_space_prefix = md
        .get("tokenizer.ggml.add_space_prefix")
        .and_then(|v| v.to_bool().ok())
        .unwrap_or(true);
    // llama.cpp's SentencePiece tokenizer: BPE over the piece scores, spaces as ▁, a space
    // in front unless the file says otherwise, whitespace otherwise kept as written
    let normalizer = SpNormalizer {
        name: "identity".into(),
        add_dummy_prefix: add_space_prefix,
        remove_extra_whitespaces: false,
        escape_whitespaces: true,
    };
    let sp = SpModel::from_parts(pieces, SpModelType::Bpe, byte_fallback, normalizer, true)
        .with_context(|| format!("{source}: the llama vocabulary"))?;
    Ok(sp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::sentencepiece::tests::encode;

    #[test]
    fn sentencepiece_model_file_tokenizes_and_round_trips() -> Result<()> {
        let mut pieces = vec![("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3)];
        let bytes: Vec<String> = (0..=255u8).map(|b| format!("<0x{b:02X}>")).collect();
        pieces.extend(bytes.iter().map(|b| (b.as_str(), 0.0, 6)));
        pieces.extend([
            ("▁hello", -1.0, 1),
            ("▁world", -1.5, 1),
            ("▁", -3.0, 1),
            ("h", -5.0, 1),
            ("▁hel", -4.0, 1),
            ("lo", -4.0, 1),
        ]);
        let dir = std::env::temp_dir().join(format!("wmtp-spm-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("tokenizer.model");
        std::fs::write(&path, encode(&pieces))?;
        let tok = Tokenizer::from_sentencepiece_model(&path)?;
        assert_eq!((tok.bos_id, tok.eos_id), (Some(1), Some(2)));
        let hello = 3 + 256;
        assert_eq!(tok.encode("hello world", true)?, vec![1, hello, hello + 1]);
        // an unseen character falls back to its UTF-8 bytes, and decodes back
        let ids = tok.encode("hello é", false)?;
        assert_eq!(&ids[..2], &[hello, hello + 2]);
        assert_eq!(&ids[2..], &[3 + 0xC3, 3 + 0xA9]);
        assert_eq!(tok.decode(&ids)?, "hello é");
        // a SentencePiece model has no tokenizer.json form: saving says so
        assert!(tok.save(&dir.join("tokenizer.json")).is_err());
        assert!(Tokenizer::from_file(&dir.join("absent.json"), None, None)
            .unwrap_err()
            .to_string()
            .contains("absent.json"));
        Ok(())
    }
}
