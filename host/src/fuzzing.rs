//! Entry points for the fuzz targets (`fuzz/`, cargo-fuzz on a nightly toolchain) and for the
//! regression test that replays their corpora on stable (`tests/fuzz_regressions.rs`). Each takes
//! untrusted bytes and reads them exactly the way the product reads that kind of file — through the same
//! public function, from a file where the product reads a file — and returns Ok or an error; a panic, an
//! abort or an unbounded allocation is a bug. Targets: [`TARGETS`].

use anyhow::Result;
use std::path::PathBuf;

/// The fuzz targets, by name (the `fuzz/fuzz_targets/<name>.rs` files and the corpus folders).
pub const TARGETS: [&str; 7] = [
    "gguf",
    "safetensors",
    "pth",
    "jsonl",
    "config_toml",
    "sentencepiece",
    "adapter_config",
];

/// A scratch folder private to this process and thread.
fn scratch() -> Result<PathBuf> {
    let d = std::env::temp_dir().join(format!(
        "wmtp-fuzz-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// Writes `bytes` to `name` in the scratch folder and returns its path.
fn file(name: &str, bytes: &[u8]) -> Result<PathBuf> {
    let p = scratch()?.join(name);
    std::fs::write(&p, bytes)?;
    Ok(p)
}

/// Runs target `name` on `bytes`; unknown names are an error.
pub fn run_target(name: &str, bytes: &[u8]) -> Result<()> {
    match name {
        "gguf" => gguf(bytes),
        "safetensors" => safetensors(bytes),
        "pth" => pth(bytes),
        "jsonl" => jsonl(bytes),
        "config_toml" => config_toml(bytes),
        "sentencepiece" => sentencepiece(bytes),
        "adapter_config" => adapter_config(bytes),
        other => anyhow::bail!("no fuzz target `{other}` (targets: {TARGETS:?})"),
    }
}

/// A GGUF model file, read as `--model x.gguf` reads it (metadata, shape, tokenizer, tensors).
pub fn gguf(bytes: &[u8]) -> Result<()> {
    let p = file("model.gguf", bytes)?;
    crate::formats::gguf::read_gguf(&p).map(|_| ())
}

/// A safetensors file (HF shards, adapters, optimiser state).
pub fn safetensors(bytes: &[u8]) -> Result<()> {
    let p = file("weights.safetensors", bytes)?;
    crate::formats::meta::read_safetensors(&p).map(|_| ())
}

/// A PyTorch `consolidated.pth` state dict.
pub fn pth(bytes: &[u8]) -> Result<()> {
    let p = file("consolidated.00.pth", bytes)?;
    crate::formats::meta::read_pth(&p).map(|_| ())
}

/// A JSONL training file.
pub fn jsonl(bytes: &[u8]) -> Result<()> {
    let text = std::str::from_utf8(bytes)?;
    crate::data::dataset::parse_jsonl(text, "fuzz.jsonl").map(|_| ())
}

/// A run config (`--config x.toml`).
pub fn config_toml(bytes: &[u8]) -> Result<()> {
    let p = file("config.toml", bytes)?;
    crate::train::config::RunConfig::load(Some(&p), &[]).map(|_| ())
}

/// A SentencePiece `tokenizer.model`, loaded and used to encode and decode a mixed-script string.
pub fn sentencepiece(bytes: &[u8]) -> Result<()> {
    let p = file("tokenizer.model", bytes)?;
    let tok = crate::data::tokenizer::Tokenizer::from_sentencepiece_model(&p)?;
    let ids = tok.encode("Hello, wörld — 数字 123 ▁x\n", true)?;
    tok.decode(&ids).map(|_| ())
}

/// An adapter's `adapter_config.json`.
pub fn adapter_config(bytes: &[u8]) -> Result<()> {
    let dir = scratch()?.join("adapter");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("adapter_config.json"), bytes)?;
    crate::formats::adapter::read_adapter_config(&dir).map(|_| ())
}
