//! `tokenizer.model` files tokenised id for id as the reference `sentencepiece` library does: BPE and
//! Unigram models trained in the test by `SentencePieceTrainer` (byte fallback on, identity normaliser)
//! over 4,000 sentences with non-ASCII text; ~3,000 new sentences and edge cases each
//! (tests/fixtures/sentencepiece_cases.py writes models and expected ids; the package comes from PyPI
//! into .cache/pylib, see scripts/fixtures.sh). Decoding gives the text back (normalised whitespace).

use crate::common;

use candle_core::quantized::gguf_file::{Content, Value, VersionedMagic};
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use wmtp_host::data::Tokenizer;

/// Runs tests/fixtures/sentencepiece_cases.py into `dir` (models and cases.jsonl).
fn make_cases(dir: &Path) {
    let pylib = common::root().join(".cache/pylib");
    let out = Command::new("python3")
        .arg(common::root().join("tests/fixtures/sentencepiece_cases.py"))
        .arg(dir)
        .env("PYTHONPATH", &pylib)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "sentencepiece_cases.py failed (scripts/fixtures.sh installs `sentencepiece` into {}): {}",
        pylib.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The cases: (model, text, expected ids).
fn cases(dir: &Path) -> Vec<(String, String, Vec<u32>)> {
    let text = std::fs::read_to_string(dir.join("cases.jsonl")).unwrap();
    text.lines()
        .map(|line| {
            let c: serde_json::Value = serde_json::from_str(line).unwrap();
            let ids = c["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            (
                c["model"].as_str().unwrap().to_string(),
                c["text"].as_str().unwrap().to_string(),
                ids,
            )
        })
        .collect()
}

#[test]
fn ids_equal_the_sentencepiece_library_for_bpe_and_unigram() {
    let dir = common::tempdir();
    make_cases(dir.path());
    let bpe = Tokenizer::from_sentencepiece_model(&dir.path().join("bpe.model")).unwrap();
    let uni = Tokenizer::from_sentencepiece_model(&dir.path().join("unigram.model")).unwrap();
    let (mut n, mut wrong) = (HashMap::new(), Vec::new());
    for (kind, s, want) in cases(dir.path()) {
        let (kind, s) = (kind.as_str(), s.as_str());
        let tok = if kind == "bpe" { &bpe } else { &uni };
        let got = tok.encode(s, false).unwrap();
        *n.entry(kind.to_string()).or_insert(0) += 1;
        if got != want {
            wrong.push(format!("{kind} {s:?}: got {got:?}, want {want:?}"));
        }
        // decoding: the text with its whitespace normalised (trimmed, runs of spaces collapsed)
        let norm: Vec<&str> = s.split(' ').filter(|w| !w.is_empty()).collect();
        assert_eq!(tok.decode(&got).unwrap(), norm.join(" "), "{kind} {s:?}");
    }
    assert!(n["bpe"] > 3000 && n["unigram"] > 3000, "{n:?}");
    assert!(
        wrong.is_empty(),
        "{} of {} differ, e.g.:\n{}",
        wrong.len(),
        n.values().sum::<usize>(),
        wrong[..wrong.len().min(8)].join("\n")
    );
}

/// A GGUF `llama` vocabulary (pieces, scores, types — what llama.cpp's converter stores) of the BPE model
/// trained by `SentencePieceTrainer`, tokenised by the GGUF path: the same ids as the library on every
/// case whose whitespace the model's normaliser leaves alone (the library trims and collapses spaces;
/// llama.cpp, like the GGUF path, keeps them).
#[test]
fn a_gguf_llama_vocabulary_tokenizes_as_sentencepiece_bpe() {
    let dir = common::tempdir();
    make_cases(dir.path());
    let bytes = std::fs::read(dir.path().join("bpe.model")).unwrap();
    let pieces = wmtp_host::data::sentencepiece::parse_model_proto(&bytes).unwrap();
    let arr = |v: Vec<Value>| Value::Array(v);
    let metadata: HashMap<String, Value> = [
        ("tokenizer.ggml.model", Value::String("llama".into())),
        (
            "tokenizer.ggml.tokens",
            arr(pieces
                .iter()
                .map(|p| Value::String(p.piece.clone()))
                .collect()),
        ),
        (
            "tokenizer.ggml.scores",
            arr(pieces.iter().map(|p| Value::F32(p.score)).collect()),
        ),
        (
            "tokenizer.ggml.token_type",
            arr(pieces.iter().map(|p| Value::I32(p.kind)).collect()),
        ),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let content = Content {
        magic: VersionedMagic::GgufV3,
        metadata,
        tensor_infos: HashMap::new(),
        tensor_data_offset: 0,
    };
    let tok = Tokenizer::from_gguf(&content, "test.gguf").unwrap();
    let (mut n, mut wrong) = (0, Vec::new());
    for (kind, s, want) in cases(dir.path()) {
        let normal = s
            .split(' ')
            .filter(|w| !w.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        if kind != "bpe" || s != normal || s.contains("<s>") || s.contains("</s>") {
            continue;
        }
        n += 1;
        let got = tok.encode(&s, false).unwrap();
        if got != want {
            wrong.push(format!("{s:?}: got {got:?}, want {want:?}"));
        }
    }
    assert!(n > 2000, "only {n} cases compared");
    assert!(
        wrong.is_empty(),
        "{} of {n} differ, e.g.:\n{}",
        wrong.len(),
        wrong[..wrong.len().min(8)].join("\n")
    );
    // a control token written in the text is one id (after the space prefix), not its characters
    let ids = tok.encode("<s>", false).unwrap();
    assert!(ids.len() <= 2 && ids.last() == Some(&1), "{ids:?}");
}
