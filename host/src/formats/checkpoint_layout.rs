//! The one place that names the files of a run folder and of a checkpoint (every other file asks here):
//!
//! ```text
//! RUN/config.toml            the resolved config          RUN/metrics.jsonl   one JSON line per step
//! RUN/checkpoints/step-NNNNNN/ and RUN/checkpoints/best/, each:
//!     config.toml  trainer_state.json  plugin_state.bin  optimizer.safetensors
//!     adapter/ (LoRA runs: PEFT layout, + value_head.safetensors)  or  model/ (full fine-tuning)
//!     shards/index.json + shards/rank-NNNNN.safetensors (per-rank checkpoints instead of the above)
//! ```

use std::path::{Path, PathBuf};

/// The resolved run config (in the run folder and in every checkpoint).
pub const CONFIG: &str = "config.toml";
/// Per-step metrics, one JSON object per line (run folder).
pub const METRICS: &str = "metrics.jsonl";
/// The folder of a run's checkpoints.
pub const CHECKPOINTS: &str = "checkpoints";
/// The checkpoint with the best validation loss.
pub const BEST: &str = "best";
/// Step, data position, plugin identity (checkpoint).
pub const TRAINER_STATE: &str = "trainer_state.json";
/// The plugin's saved state (checkpoint).
pub const PLUGIN_STATE: &str = "plugin_state.bin";
/// The optimiser's named state tensors (checkpoint).
pub const OPTIMIZER: &str = "optimizer.safetensors";
/// A LoRA run's adapter in PEFT layout (checkpoint).
pub const ADAPTER: &str = "adapter";
/// A full fine-tuning run's model (checkpoint).
pub const MODEL: &str = "model";
/// The folder of a per-rank checkpoint's files.
pub const SHARDS: &str = "shards";
/// How a per-rank checkpoint's flat vectors split into tensors.
pub const SHARD_INDEX: &str = "shards/index.json";

/// `step-NNNNNN`: the checkpoint written after optimizer step `step`.
pub fn step_name(step: u64) -> String {
    format!("step-{step:06}")
}

/// `RUN/checkpoints`.
pub fn checkpoints_dir(run_dir: &Path) -> PathBuf {
    run_dir.join(CHECKPOINTS)
}

/// `shards/rank-NNNNN.safetensors`: slice `r` of a per-rank checkpoint.
pub fn rank_file(r: usize) -> String {
    format!("{SHARDS}/rank-{r:05}.safetensors")
}

/// Whether `dir` is a checkpoint (it has a trainer state).
pub fn is_checkpoint(dir: &Path) -> bool {
    dir.join(TRAINER_STATE).exists()
}

/// The step of a `step-NNNNNN` folder name (None for `best` and anything else).
pub fn step_of(name: &str) -> Option<u64> {
    name.strip_prefix("step-")?.parse().ok()
}

/// Deletes the oldest `step-N` checkpoints of `run_dir` so that the newest `keep_last` remain
/// (`checkpoint.keep_last`; 0 keeps all; `best` is never touched). Returns the deleted folders.
pub fn prune(run_dir: &Path, keep_last: usize) -> std::io::Result<Vec<PathBuf>> {
    if keep_last == 0 {
        return Ok(vec![]);
    }
    let mut steps: Vec<(u64, PathBuf)> = std::fs::read_dir(checkpoints_dir(run_dir))?
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((step_of(e.file_name().to_str()?)?, e.path())))
        .filter(|(_, p)| is_checkpoint(p))
        .collect();
    steps.sort();
    let n = steps.len().saturating_sub(keep_last);
    let mut gone = Vec::new();
    for (_, p) in steps.into_iter().take(n) {
        std::fs::remove_dir_all(&p)?;
        gone.push(p);
    }
    Ok(gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// keep_last = 2 leaves the two newest step checkpoints and `best`; 0 deletes nothing.
    #[test]
    fn prune_keeps_the_newest_and_best() {
        let run = tempfile::tempdir().unwrap();
        for name in [
            step_name(1),
            step_name(2),
            step_name(10),
            step_name(30),
            BEST.into(),
        ] {
            let d = checkpoints_dir(run.path()).join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(TRAINER_STATE), "{}").unwrap();
        }
        assert!(prune(run.path(), 0).unwrap().is_empty());
        let gone = prune(run.path(), 2).unwrap();
        assert_eq!(gone.len(), 2);
        let mut left: Vec<String> = std::fs::read_dir(checkpoints_dir(run.path()))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["best", "step-000010", "step-000030"]);
    }
}
