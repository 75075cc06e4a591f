//! Resuming a run: from a checkpoint folder or a run folder (its latest complete checkpoint), from any
//! working directory. The checkpoint names its plugin by absolute path and SHA-256; resuming with a
//! plugin whose bytes differ — the same path rebuilt, or another `--pipeline` — needs
//! `--allow-plugin-change`. `--set` overrides go through the same parsing and validation as a fresh run.

use crate::checkpoint::{self, file_sha256, TrainerState};
use crate::train::session::Session;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The checkpoint to resume from: `path` itself, or — when `path` is a run folder — its latest
/// complete `step-N` checkpoint.
pub fn checkpoint_to_resume(path: &Path) -> Result<PathBuf> {
    if crate::checkpoint::layout::is_checkpoint(path) {
        return Ok(path.to_path_buf());
    }
    if crate::checkpoint::layout::checkpoints_dir(path).is_dir() {
        checkpoint::clean_leftovers(path)?;
        return checkpoint::latest(path).with_context(|| {
            format!(
                "--resume {}: the run folder has no complete step-N checkpoint",
                path.display()
            )
        });
    }
    bail!(
        "--resume {}: neither a checkpoint (no trainer_state.json) nor a run folder (no checkpoints/)",
        path.display()
    )
}

/// The plugin identity to record for `path`: its absolute path and SHA-256.
pub fn plugin_identity(path: &Path) -> Result<(String, String)> {
    let abs = std::fs::canonicalize(path)
        .with_context(|| format!("pipeline plugin {}", path.display()))?;
    Ok((abs.display().to_string(), file_sha256(&abs)?))
}

/// `identity` with the digest of the bytes the session's plugin compiled (read once, so a file replaced
/// after `identity` was hashed is caught and never recorded under the old digest).
pub fn compiled_identity(s: &Session, identity: (String, String)) -> Result<(String, String)> {
    match s.weigher.code_sha256() {
        Some(sha) => Ok((identity.0, sha.to_string())),
        None => Ok(identity),
    }
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}

/// The plugin to resume with — `chosen` (from `--pipeline`) or the checkpoint's — checked against the
/// digest the checkpoint recorded; returned with its identity (absolute path, SHA-256) for the new state.
fn resume_plugin(
    st: &TrainerState,
    chosen: Option<&Path>,
    allow_change: bool,
) -> Result<(PathBuf, (String, String))> {
    let path = match chosen {
        Some(p) => p.to_path_buf(),
        None => {
            let p = PathBuf::from(&st.pipeline);
            if !p.exists() {
                bail!(
                    "the checkpoint's pipeline plugin {} is not there{}; pass --pipeline FILE (with --allow-plugin-change if it is not the same build)",
                    p.display(),
                    if p.is_relative() {
                        " (a relative path from a checkpoint written before plugin paths were stored absolute)"
                    } else {
                        ""
                    }
                );
            }
            p
        }
    };
    let identity = plugin_identity(&path)?;
    let sha = &identity.1;
    if !st.pipeline_sha256.is_empty() && !allow_change && *sha != st.pipeline_sha256 {
        bail!(
            "the checkpoint was written with pipeline plugin {} (sha256 {}…), but {} has sha256 {}…: pass --allow-plugin-change to resume with a different plugin (its saved state must still load)",
            st.pipeline,
            short(&st.pipeline_sha256),
            path.display(),
            short(sha)
        );
    }
    Ok((path, identity))
}

/// A session restored from checkpoint (or run folder) `path`, with `overrides` applied to its config
/// (parsed and validated like a fresh run's). `shard_place`: (world size, rank) when the session will be
/// sharded: its policy is built in host memory ([`Session::new_for`]).
pub fn resume_session(
    path: &Path,
    overrides: &[String],
    pipeline: Option<&Path>,
    allow_plugin_change: bool,
    shard_place: Option<(usize, usize)>,
) -> Result<(Session, TrainerState, PathBuf)> {
    let ckpt = checkpoint_to_resume(path)?;
    let (cfg, mut st) = checkpoint::read_meta(&ckpt, overrides)?;
    let (plugin, identity) = resume_plugin(&st, pipeline, allow_plugin_change)?;
    let mut s = Session::new_for(cfg, &plugin, shard_place)?;
    let identity = compiled_identity(&s, identity)?;
    if !st.pipeline_sha256.is_empty() && !allow_plugin_change && identity.1 != st.pipeline_sha256 {
        bail!(
            "pipeline plugin {} changed while it was being loaded (sha256 {}… when checked, {}… when compiled): resume again",
            plugin.display(),
            short(&st.pipeline_sha256),
            short(&identity.1)
        );
    }
    checkpoint::load_into(&ckpt, &mut s, &st)?;
    (st.pipeline, st.pipeline_sha256) = identity;
    Ok((s, st, ckpt))
}
