//! GGUF llama models (e.g. SmolLM2-135M-Instruct Q4_1): shape from the `llama.*` metadata, tensors
//! dequantised to f32 and renamed to Meta keys (GGUF already stores q/k in the interleaved layout), the
//! tokenizer from `tokenizer.ggml.*`.

use crate::data::Tokenizer;
use crate::model::ModelArgs;
use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// Meta name for a GGUF tensor name.
fn meta_name(g: &str) -> Option<String> {
    match g {
        "token_embd.weight" => return Some("tok_embeddings.weight".into()),
        "output_norm.weight" => return Some("norm.weight".into()),
        "output.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = g.strip_prefix("blk.")?;
    let (i, sub) = rest.split_once('.')?;
    let ours = match sub {
        "attn_q.weight" => "attention.wq.weight",
        "attn_k.weight" => "attention.wk.weight",
        "attn_v.weight" => "attention.wv.weight",
        "attn_output.weight" => "attention.wo.weight",
        "ffn_gate.weight" => "feed_forward.w1.weight",
        "ffn_down.weight" => "feed_forward.w2.weight",
        "ffn_up.weight" => "feed_forward.w3.weight",
        "attn_norm.weight" => "attention_norm.weight",
        "ffn_norm.weight" => "ffn_norm.weight",
        other => return Some(format!("layers.{i}.{other}")),
    };
    Some(format!("layers.{i}.{ours}"))
}

/// Checks that a tensor's declared shape and offset describe bytes inside the file, with no overflow,
/// before any of it is read or allocated (a corrupt or hostile header could otherwise make the reader
/// multiply past `usize` or allocate terabytes).
fn check_tensor_extent(
    name: &str,
    info: &gguf_file::TensorInfo,
    data_offset: u64,
    file_len: u64,
) -> Result<()> {
    let elems = info
        .shape
        .dims()
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
        .with_context(|| format!("shape {:?} overflows", info.shape.dims()))?;
    if elems == 0 {
        // besides being no model weight, an empty tensor reaches candle's `from_raw_data` with a dangling,
        // unaligned pointer (undefined behaviour; found by fuzzing)
        bail!("shape {:?} has no elements", info.shape.dims());
    }
    let block = info.ggml_dtype.block_size() as u64;
    if block == 0 || !elems.is_multiple_of(block) {
        bail!("{elems} elements are not a whole number of {block}-element blocks");
    }
    let bytes = (elems / block)
        .checked_mul(info.ggml_dtype.type_size() as u64)
        .context("byte size overflows")?;
    let end = data_offset
        .checked_add(info.offset)
        .and_then(|o| o.checked_add(bytes))
        .context("offset overflows")?;
    if end > file_len {
        bail!(
            "{name}: shape {:?} at offset {} needs {bytes} bytes, past the end of the {file_len}-byte file",
            info.shape.dims(),
            info.offset
        );
    }
    Ok(())
}

/// Reads a GGUF llama model: (shape, f32 tensors in Meta names, tokenizer). candle's parser runs
/// [`guarded`](super::guarded::guarded): a panic on a malformed file is an error naming it.
pub fn read_gguf(path: &Path) -> Result<(ModelArgs, HashMap<String, Tensor>, Tokenizer)> {
    super::guarded::guarded(&format!("GGUF file {}", path.display()), || {
        read_gguf_unguarded(path)
    })
}

/// The tokenizer of a GGUF file alone (its metadata; no tensor is read).
pub fn read_gguf_tokenizer(path: &Path) -> Result<Tokenizer> {
    let src = path.display().to_string();
    super::guarded::guarded(&format!("GGUF file {src}"), || {
        let mut file =
            std::fs::File::open(path).with_context(|| format!("opening GGUF file {src}"))?;
        let content = gguf_file::Content::read(&mut file)
            .with_context(|| format!("reading GGUF file {src}"))?;
        Tokenizer::from_gguf(&content, &src)
    })
}

fn read_gguf_unguarded(path: &Path) -> Result<(ModelArgs, HashMap<String, Tensor>, Tokenizer)> {
    let src = path.display().to_string();
    let mut file = std::fs::File::open(path).with_context(|| format!("opening GGUF file {src}"))?;
    let content =
        gguf_file::Content::read(&mut file).with_context(|| format!("reading GGUF file {src}"))?;
    let md = &content.metadata;
    let arch = md
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .with_context(|| format!("{src}: GGUF metadata lacks `general.architecture`"))?;
    if arch != "llama" {
        bail!("{src}: GGUF architecture is `{arch}`, only `llama` models are supported");
    }
    let num = |k: &str| -> Result<u64> {
        let v = md
            .get(k)
            .with_context(|| format!("{src}: GGUF metadata lacks `{k}`"))?;
        v.to_u64()
            .or_else(|_| v.to_u32().map(u64::from))
            .with_context(|| format!("{src}: `{k}` is not an integer"))
    };
    let float = |k: &str, default: f64| {
        md.get(k)
            .and_then(|v| v.to_f32().ok())
            // read as the decimal it was written as (1e-5, not 9.99999974e-6)
            .map_or(default, |f| f.to_string().parse().unwrap_or(f64::from(f)))
    };
    let tokenizer = Tokenizer::from_gguf(&content, &src)?;
    let vocab_size = match md.get("llama.vocab_size") {
        Some(_) => num("llama.vocab_size")? as usize,
        None => tokenizer.vocab_size(),
    };
    let n_heads = num("llama.attention.head_count")? as usize;
    let args = ModelArgs {
        dim: num("llama.embedding_length")? as usize,
        n_layers: num("llama.block_count")? as usize,
        n_heads,
        n_kv_heads: Some(num("llama.attention.head_count_kv").unwrap_or(n_heads as u64) as usize),
        vocab_size,
        multiple_of: 256,
        ffn_dim_multiplier: None,
        ffn_hidden_dim: Some(num("llama.feed_forward_length")? as usize),
        norm_eps: float("llama.attention.layer_norm_rms_epsilon", 1e-5),
        rope_theta: float("llama.rope.freq_base", 1e4),
        max_seq_len: num("llama.context_length").unwrap_or(2048) as usize,
        n_future_tokens: 1,
    };
    args.validate()
        .with_context(|| format!("unsupported model shape in {src}"))?;
    let file_len = file
        .metadata()
        .with_context(|| format!("reading GGUF file {src}"))?
        .len();
    let mut tensors = HashMap::new();
    for (name, info) in &content.tensor_infos {
        let Some(meta) = meta_name(name) else {
            continue;
        };
        check_tensor_extent(name, info, content.tensor_data_offset, file_len)
            .with_context(|| format!("{src}: tensor `{name}`"))?;
        let q = content
            .tensor(&mut file, name, &Device::Cpu)
            .with_context(|| format!("{src}: reading tensor `{name}`"))?;
        let t = q
            .dequantize(&Device::Cpu)
            .with_context(|| format!("{src}: dequantising `{name}`"))?;
        tensors.insert(meta, t);
    }
    if !tensors.contains_key("output.weight") {
        // tied embeddings: the output projection starts as a copy (wmtp never ties them)
        if let Some(e) = tensors.get("tok_embeddings.weight") {
            tensors.insert("output.weight".into(), e.copy()?);
        }
    }
    Ok((args, tensors, tokenizer))
}
