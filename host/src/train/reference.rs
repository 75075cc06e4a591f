//! The frozen reference model for pipelines that need reference losses (Rho-1). Either a model the
//! config names, or — by default — a short baseline stage: a session built from the run's own config with
//! the native baseline pipeline (so: the same initial model, LoRA settings and training split, the
//! correct samples only), trained for `reference.baseline_steps` steps with the same step as `wmtp run`,
//! LoRA merged, cached on disk and reused by later runs. The cache is keyed by content: the SHA-256 of
//! the data files' and model files' bytes and of the stage's serialised config, so an edited file never
//! reuses a stale reference. The reference is thus a model that has seen the data, and the excess loss
//! CE_policy − CE_reference marks tokens the data teaches and the policy has not learnt yet.

use super::config::RunConfig;
use super::session::Session;
use super::session_step::train_step;
use super::step::NativeBaseline;
use crate::formats::load::{load_model, LoadOptions};
use crate::model::Transformer;
use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Where automatic reference stages are cached: `reference/` beside the compiled-plugin cache
/// (`$WMTP_CACHE_DIR/reference`, else `~/.cache/wmtp/reference`).
pub fn reference_cache_dir() -> Option<PathBuf> {
    wmtp_plugin_host::default_cache_dir().and_then(|p| p.parent().map(|q| q.join("reference")))
}

/// The reference model for `cfg` (frozen, LoRA merged).
pub fn reference_model(cfg: &RunConfig, opts: &LoadOptions) -> Result<Transformer> {
    if !cfg.reference.model.is_empty() {
        let r = LoadOptions {
            n_future_tokens: None,
            ..opts.clone()
        };
        return Ok(load_model(&cfg.reference.model, &r)
            .context("loading reference.model")?
            .model);
    }
    let stage = stage_config(cfg);
    let dir = reference_cache_dir()
        .map(|d| content_key(&stage).map(|k| d.join(k)))
        .transpose()?;
    if let Some(d) = &dir {
        if d.join("params.json").exists() {
            if let Ok(lm) = load_model(&d.to_string_lossy(), opts) {
                eprintln!("reference: cached baseline stage {}", d.display());
                return Ok(lm.model);
            }
        }
    }
    let steps = stage.training.steps;
    eprintln!("reference: training a {steps}-step baseline stage (cached for later runs)");
    // the native baseline needs no reference itself: the session is assembled directly
    let mut s = Session::assemble(
        stage,
        Box::new(NativeBaseline::default()),
        Path::new("native-baseline"),
        None,
        &opts.device,
        None,
    )
    .context("building the reference stage")?;
    for step in 0..steps {
        train_step(&mut s, step).context("training the reference stage")?;
    }
    let mut model = s.model;
    match &dir {
        Some(d) => {
            let tmp = d.with_extension("tmp");
            let _ = std::fs::remove_dir_all(&tmp);
            crate::formats::adapter::save_full(&tmp, &model, None)?;
            let _ = std::fs::remove_dir_all(d);
            std::fs::rename(&tmp, d)
                .with_context(|| format!("caching the reference in {}", d.display()))?;
            Ok(load_model(&d.to_string_lossy(), opts)?.model)
        }
        None => {
            model.set_lora_merged(true)?;
            model.set_trainable_groups(&[])?;
            Ok(model)
        }
    }
}

/// The baseline stage's config: the run's model, data, LoRA and optimiser settings with the stage's
/// length and schedule (5 % warm-up, cosine to 10 %), one micro-batch per step, the groups the baseline
/// trains (no `trainable` / `trainable_prefixes` narrowing), no value head, critic or plugin settings; the
/// run's `runtime.fused_kernels`, every other runtime key at its default.
fn stage_config(cfg: &RunConfig) -> RunConfig {
    let mut c = cfg.clone();
    c.training.steps = cfg.reference.baseline_steps.max(1);
    c.training.grad_accum = 1;
    c.training.warmup_ratio = 0.05;
    c.training.min_lr_ratio = 0.1;
    c.training.trainable.clear();
    c.training.trainable_prefixes.clear();
    c.training.value_head_lr = None;
    c.critic = Default::default();
    c.value_head = Default::default();
    c.reference = Default::default();
    c.plugin = Default::default();
    c.stages.clear();
    c.checkpoint = Default::default();
    // the reference stage trains with the run's kernel choice (each session's models carry their own)
    c.runtime = crate::train::config::RuntimeSection {
        fused_kernels: cfg.runtime.fused_kernels,
        ..Default::default()
    };
    c
}

/// SHA-256 (hex) of the stage config's TOML, the bytes of its data files and of its model's files.
fn content_key(stage: &RunConfig) -> Result<String> {
    let mut h = Sha256::new();
    h.update(b"wmtp-reference-v2\0");
    h.update(stage.to_toml()?.as_bytes());
    for spec in [&stage.data.train, &stage.data.validation] {
        let p = Path::new(spec.as_str());
        if p.is_file() {
            hash_file(&mut h, p)?;
        }
    }
    let m = Path::new(&stage.model.path);
    if m.is_file() {
        hash_file(&mut h, m)?;
    } else if m.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(m)
            .with_context(|| format!("reading {}", m.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        for f in files {
            h.update(
                f.file_name()
                    .map(|n| n.as_encoded_bytes())
                    .unwrap_or_default(),
            );
            hash_file(&mut h, &f)?;
        }
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Feeds the bytes of file `p` into `h` (streamed, not read whole).
pub(crate) fn hash_file(h: &mut Sha256, p: &Path) -> Result<()> {
    let mut f = std::fs::File::open(p).with_context(|| format!("reading {}", p.display()))?;
    std::io::copy(&mut f, h).with_context(|| format!("reading {}", p.display()))?;
    Ok(())
}
