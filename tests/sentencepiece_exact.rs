//! `tokenizer.model` files tokenised id for id as the reference `sentencepiece` library does: BPE and
//! Unigram models trained in the test by `SentencePieceTrainer` (byte fallback on, identity normaliser)
//! over 4,000 sentences with non-ASCII text; ~3,000 new sentences and edge cases each
//! (tests/fixtures/sentencepiece_cases.py writes models and expected ids; the package comes from PyPI
//! into .cache/pylib, see scripts/fixtures.sh). Decoding gives the text back (normalised whitespace).

mod common;

use std::path::PathBuf;
use std::process::Command;
use wmtp_host::data::Tokenizer;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn ids_equal_the_sentencepiece_library_for_bpe_and_unigram() {
    let dir = common::tempdir();
    let pylib = root().join(".cache/pylib");
    let out = Command::new("python3")
        .arg(root().join("tests/fixtures/sentencepiece_cases.py"))
        .arg(dir.path())
        .env("PYTHONPATH", &pylib)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "sentencepiece_cases.py failed (scripts/fixtures.sh installs `sentencepiece` into {}): {}",
        pylib.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(dir.path().join("cases.jsonl")).unwrap();
    let bpe = Tokenizer::from_sentencepiece_model(&dir.path().join("bpe.model")).unwrap();
    let uni = Tokenizer::from_sentencepiece_model(&dir.path().join("unigram.model")).unwrap();
    let (mut n, mut wrong) = (std::collections::HashMap::new(), Vec::new());
    for line in text.lines() {
        let c: serde_json::Value = serde_json::from_str(line).unwrap();
        let (kind, s) = (c["model"].as_str().unwrap(), c["text"].as_str().unwrap());
        let want: Vec<u32> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
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
