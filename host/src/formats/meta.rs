//! Meta checkpoints: `params.json` plus `consolidated.*.pth` (PyTorch zip pickles, model-parallel shards
//! concatenated) or `*.safetensors` with the same key names.

use crate::model::ModelArgs;
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Files of `dir` whose names satisfy `pred`, sorted.
pub fn files_matching(dir: &Path, pred: impl Fn(&str) -> bool) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let p = e?.path();
        if p.file_name().and_then(|n| n.to_str()).is_some_and(&pred) {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// The dimension along which Meta's model-parallel shards split a tensor (None: replicated).
fn shard_dim(name: &str) -> Option<usize> {
    if name.ends_with("norm.weight") {
        None
    } else if name.starts_with("tok_embeddings")
        || name.ends_with("wo.weight")
        || name.ends_with("w2.weight")
    {
        Some(1)
    } else {
        Some(0)
    }
}

/// Reads a PyTorch `.pth` state dict.
pub fn read_pth(path: &Path) -> Result<HashMap<String, Tensor>> {
    let what = format!("PyTorch checkpoint {}", path.display());
    let tensors = super::guarded::guarded(&what, || {
        candle_core::pickle::read_all(path).map_err(anyhow::Error::from)
    })
    .with_context(|| format!("reading {what} (expected torch.save zip format)"))?;
    if tensors.is_empty() {
        bail!("{}: no tensors found in the checkpoint", path.display());
    }
    Ok(tensors.into_iter().collect())
}

/// Reads a safetensors file, naming the file on any error (e.g. truncation). The file is memory-mapped
/// and each tensor copied out of the mapping, whose pages are then given back (`MADV_DONTNEED`): the
/// process holds one copy of the weights, not the file's bytes as well (a 2.5 GB file: 4.9 → 2.6 GB
/// peak resident memory).
pub fn read_safetensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    let what = format!("safetensors file {}", path.display());
    super::guarded::guarded(&what, || read_safetensors_mapped(path))
        .with_context(|| format!("reading {what}"))
}

fn read_safetensors_mapped(path: &Path) -> Result<HashMap<String, Tensor>> {
    use candle_core::safetensors::Load;
    let file = std::fs::File::open(path)?;
    // SAFETY: a read-only private mapping; like every mmap reader (candle's included) it assumes the file
    // is not truncated or rewritten while it is read, which a checkpoint being loaded is not.
    let mmap = unsafe { memmap2::Mmap::map(&file)? };
    let st = safetensors::SafeTensors::deserialize(&mmap)?;
    let base = mmap.as_ptr() as usize;
    let page = 4096usize;
    let mut out = HashMap::with_capacity(st.len());
    for (name, view) in st.tensors() {
        let t = view.load(&Device::Cpu)?;
        // give back the whole pages of this tensor's bytes, now copied
        let (start, end) = (
            view.data().as_ptr() as usize - base,
            view.data().as_ptr() as usize - base + view.data().len(),
        );
        let (first, last) = (start.div_ceil(page) * page, end / page * page);
        if last > first {
            // SAFETY: nothing reads these bytes again (their tensor is a copy); a private file mapping
            // re-reads dropped pages from the file if it ever were.
            unsafe {
                mmap.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    first,
                    last - first,
                )?
            };
        }
        out.insert(name, t);
    }
    Ok(out)
}

/// Reads a Meta-format directory: `params.json` and its weights (shards merged).
pub fn read_meta_dir(dir: &Path) -> Result<(ModelArgs, HashMap<String, Tensor>)> {
    let args = ModelArgs::from_params_json(&dir.join("params.json"))?;
    let pth = files_matching(dir, |n| {
        n.starts_with("consolidated") && n.ends_with(".pth")
    })?;
    let st = files_matching(dir, |n| n.ends_with(".safetensors"))?;
    let shards: Vec<HashMap<String, Tensor>> = if !pth.is_empty() {
        pth.iter().map(|p| read_pth(p)).collect::<Result<_>>()?
    } else if !st.is_empty() {
        // safetensors shards partition the keys (HF-style); merge them.
        let mut all = HashMap::new();
        for p in &st {
            all.extend(read_safetensors(p)?);
        }
        return Ok((args, all));
    } else {
        bail!(
            "{}: no consolidated*.pth or *.safetensors weights next to params.json",
            dir.display()
        );
    };
    if shards.len() == 1 {
        return Ok((args, shards.into_iter().next().unwrap_or_default()));
    }
    let mut merged = HashMap::new();
    for name in shards[0].keys() {
        let parts = shards
            .iter()
            .zip(&pth)
            .map(|(s, p)| {
                s.get(name)
                    .cloned()
                    .with_context(|| format!("{}: shard lacks `{name}`", p.display()))
            })
            .collect::<Result<Vec<_>>>()?;
        let t = match shard_dim(name) {
            None => parts[0].clone(),
            Some(d) => Tensor::cat(&parts, d)
                .with_context(|| format!("concatenating shards of `{name}`"))?,
        };
        merged.insert(name.clone(), t);
    }
    Ok((args, merged))
}
