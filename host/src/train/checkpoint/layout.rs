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
