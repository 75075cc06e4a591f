//! Run configuration (`configs/*.toml`): model, data, training, LoRA, value head, reference, critic,
//! checkpoint, runtime, distributed, and the `[plugin]` table handed to the plugin's `configure`. Unknown keys and bad
//! values are errors naming the key; `--set a.b=v` overrides any key; the resolved config is printed and
//! saved with every checkpoint.

use crate::model::{LoraConfig, ParamGroup, ValueHeadConfig};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// `configs/default.toml`, used when `wmtp run` gets no config.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../../configs/default.toml");

/// The whole run configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// The model to train.
    #[serde(default)]
    pub model: ModelSection,
    /// Training data.
    #[serde(default)]
    pub data: DataSection,
    /// Optimisation and loop settings.
    #[serde(default)]
    pub training: TrainingSection,
    /// LoRA settings (used when `training.use_lora`).
    #[serde(default)]
    pub lora: LoraConfig,
    /// Value head (used when the pipeline needs values).
    #[serde(default)]
    pub value_head: ValueHeadConfig,
    /// Reference model for pipelines that need reference losses.
    #[serde(default)]
    pub reference: ReferenceSection,
    /// A frozen critic supplying the values (verifiable with a separately trained critic).
    #[serde(default)]
    pub critic: CriticSection,
    /// Checkpointing.
    #[serde(default)]
    pub checkpoint: CheckpointSection,
    /// Logging, evaluation cadence and plugin limits.
    #[serde(default)]
    pub runtime: RuntimeSection,
    /// How a launched run splits the policy over its ranks.
    #[serde(default)]
    pub distributed: DistributedSection,
    /// Passed verbatim to the plugin's `configure`.
    #[serde(default)]
    pub plugin: toml::Table,
    /// Consecutive training stages (`[[stages]]`, train/stages.rs); empty: one stage, `[training]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageSection>,
}

/// `[model]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// Preset name, `.gguf` file, or Meta / HF checkpoint directory.
    pub path: String,
    /// Number of heads (widens a next-token checkpoint).
    pub n_future_tokens: Option<usize>,
    /// `copy` or `random` for heads the checkpoint lacks.
    pub extra_heads_init: crate::formats::load::ExtraHeadsInit,
    /// Compute dtype: f32 | bf16 | f16.
    pub dtype: crate::model::Precision,
    /// cpu | cuda | cuda:N.
    pub device: crate::model::DeviceSpec,
}

impl Default for ModelSection {
    fn default() -> Self {
        ModelSection {
            path: "tiny".into(),
            n_future_tokens: None,
            extra_heads_init: Default::default(),
            dtype: Default::default(),
            device: Default::default(),
        }
    }
}

/// `[data]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataSection {
    /// Training JSONL (`builtin:arith` = the bundled corpus).
    pub train: String,
    /// Validation JSONL; empty = hold out `val_fraction` of the problems.
    pub validation: String,
    /// Share of problems held out for validation when no validation file is given.
    pub val_fraction: f64,
    /// Longest sample in tokens; longer ones are dropped (and counted).
    pub max_length: usize,
    /// Pairs per problem for paired pipelines.
    pub max_pairs_per_problem: usize,
    /// How instruction rows become prompt + response: `auto` (the model's own chat template when it
    /// ships one, else ChatML when the tokenizer has `<|im_start|>`, else Alpaca), `model`, `alpaca`,
    /// `chatml`, `none`. `wmtp generate --template` takes the same.
    pub template: crate::data::template::Template,
    /// Pack training samples into sequences of up to `max_length` tokens (whole samples in order; see
    /// `data::dataset::pack`): fewer pad tokens per step for short `{text}` rows. Attention crosses the
    /// documents of a sequence. Pointwise pipelines without rewards only (baseline, rho1); validation
    /// stays unpacked, so its numbers compare with unpacked runs.
    pub pack: bool,
}

impl Default for DataSection {
    fn default() -> Self {
        DataSection {
            train: "builtin:arith".into(),
            validation: String::new(),
            val_fraction: 0.1,
            max_length: 256,
            max_pairs_per_problem: 2,
            template: Default::default(),
            pack: false,
        }
    }
}

/// `[training]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingSection {
    /// LoRA (true) or full fine-tuning (false).
    pub use_lora: bool,
    /// Optimizer steps.
    pub steps: u64,
    /// Samples (or pairs) per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Peak learning rate of the value head (default: `lr`).
    pub value_head_lr: Option<f64>,
    /// Weight decay (≥ 2-D tensors only).
    pub weight_decay: f64,
    /// Warm-up share of the steps.
    pub warmup_ratio: f64,
    /// Final lr / peak lr.
    pub min_lr_ratio: f64,
    /// Global gradient-norm clip (0: off).
    pub max_grad_norm: f64,
    /// Consecutive steps with a non-finite gradient norm (each skipped, weights unchanged) after which
    /// the run stops with an error.
    pub max_skipped_steps: u64,
    /// Seed of the data order, LoRA A init, value-head init and dropout. Every rank uses the same seed and
    /// the same sample stream (rank r of W takes micro-batches r, r+W, …); dropout masks are seeded per
    /// global micro-batch.
    pub seed: u64,
    /// Parameter groups to train (lora, value_head, heads, trunk); empty = the plugin's manifest (LoRA
    /// replaces trunk/heads when on).
    pub trainable: Vec<crate::model::ParamGroup>,
    /// Parameter-name prefixes (Meta names: `extra_heads.`, `layers.29.`, `output`, …) that narrow the
    /// trained groups to the parameters whose names start with one of them (`*` stands for any run of
    /// characters: `*lora_` is every LoRA matrix); empty = no narrowing.
    /// E.g. `["extra_heads."]` trains heads 1..H−1 only (through LoRA, or whole blocks with
    /// `use_lora = false` and `trainable = ["heads"]`), so the trunk and head 0 keep their weights.
    pub trainable_prefixes: Vec<String>,
    /// Stop the gradient of heads 1..H−1 at their input: their losses train only their own blocks, so
    /// the trunk and the shared norm/output learn from head 0's loss alone (next-token training for the
    /// model, MTP training for the extra heads, in one run). Off: every head's loss reaches the trunk.
    pub detach_extra_heads: bool,
    /// Rows per vocabulary-projection chunk.
    pub chunk_rows: usize,
}

impl Default for TrainingSection {
    fn default() -> Self {
        TrainingSection {
            use_lora: true,
            steps: 60,
            batch_size: 8,
            grad_accum: 1,
            lr: 3e-3,
            value_head_lr: None,
            weight_decay: 0.01,
            warmup_ratio: 0.05,
            min_lr_ratio: 0.1,
            max_grad_norm: 1.0,
            max_skipped_steps: 5,
            seed: 42,
            trainable: vec![],
            trainable_prefixes: vec![],
            detach_extra_heads: false,
            chunk_rows: 2048,
        }
    }
}

/// `[reference]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReferenceSection {
    /// Reference model (same forms as `model.path`); empty = a short baseline stage from the initial
    /// model on the training data (`baseline_steps`), cached in the artifact cache.
    pub model: String,
    /// Steps of the automatic baseline stage.
    pub baseline_steps: u64,
}

impl Default for ReferenceSection {
    fn default() -> Self {
        ReferenceSection {
            model: String::new(),
            baseline_steps: 40,
        }
    }
}

/// `[critic]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CriticSection {
    /// A critic run's checkpoint directory; when set, values come from that frozen model and value head
    /// (LoRA merged) instead of the policy's own value head.
    pub checkpoint: String,
}

/// `[checkpoint]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointSection {
    /// Run directory (checkpoints, metrics, config); empty = `runs/<pipeline>-<seconds since epoch>`.
    pub dir: String,
    /// Save every N optimizer steps (0: only at the end).
    pub every: u64,
    /// Keep only the newest N `step-N` checkpoints, deleting older ones after each save (0: keep all;
    /// `best` is always kept).
    pub keep_last: usize,
    /// Launched runs: every rank writes its own shards (`shards/rank-NNNNN.safetensors` + an index)
    /// instead of rank 0 writing one gathered checkpoint. Either resumes on any number of ranks.
    pub sharded: bool,
}

/// `[distributed]`: used when the run is launched (`wmtp launch`, torchrun, Slurm).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistributedSection {
    /// `full` (FSDP FULL_SHARD, the default): weights, gradients and optimiser state split over the
    /// ranks; `grad-op` (SHARD_GRAD_OP): gradients and optimiser state split, weights gathered once per
    /// step; `none`: every rank keeps everything (data parallelism).
    pub sharding: crate::parallel::fsdp::Sharding,
    /// Under `full` sharding over NCCL: gather the next unit's weights on a second CUDA stream while
    /// the current unit computes (one more unit's weights in memory). Default on.
    pub prefetch: bool,
}

impl Default for DistributedSection {
    fn default() -> Self {
        DistributedSection {
            sharding: Default::default(),
            prefetch: true,
        }
    }
}

/// `[runtime]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeSection {
    /// Validate every N steps (0: only at the end).
    pub eval_every: u64,
    /// Plugin wall-clock cap per call, seconds.
    pub plugin_timeout_s: f64,
    /// Wall-clock cap on compiling the plugin, seconds (cached compiles load in milliseconds).
    pub plugin_compile_s: f64,
    /// Plugin memory cap, MiB.
    pub plugin_memory_mb: usize,
    /// Deterministic instruction budget per plugin call (wasmtime fuel); 0 = no fuel metering.
    pub plugin_fuel: u64,
    /// Show a progress bar on a terminal (stderr); without one (nohup, Slurm, CI, a pipe), or with
    /// `progress = false`, the run prints plain lines instead (`log_every`, `log_every_s`).
    pub progress: bool,
    /// Without a progress bar: a line (step, loss, CE, lr, grad norm, tokens/s, elapsed, ETA) every N
    /// steps (0: not by steps), besides the last step and every validation.
    pub log_every: u64,
    /// Without a progress bar: a line at least every N seconds (0: not by time).
    pub log_every_s: f64,
    /// Also write the metrics as TensorBoard scalars (RUN_DIR/tensorboard/): `tensorboard --logdir runs/`.
    pub tensorboard: bool,
    /// `blocks`: keep only each block's input in the forward and recompute the block in the backward
    /// (least memory); `none`: keep every block's activations from forward to backward (no recomputation,
    /// about a block's activations × blocks more memory); `selective`: keep every matrix product's and
    /// the attention's output, recompute the RMSNorm outputs, the SwiGLU product and the heads'
    /// vocabulary chunks in the backward (about 0.7 of "none"'s activations for a little recomputation);
    /// `auto` (default): `selective` when the run's estimated peak with it (`wmtp info`'s estimate) is
    /// at most 90% of the GPU's memory, else `blocks`; `blocks` on the CPU.
    pub activation_checkpointing: ActivationCheckpointing,
    /// With `activation_checkpointing = "selective"`: how many blocks keep the selective set, counted
    /// from the bottom of the trunk and then the heads' blocks; the others keep only their input and are
    /// recomputed whole, as with "blocks" — a point between the two modes' memory and speed (`wmtp info
    /// --selective-blocks` estimates it). Unset: every block. "auto" picks it by itself when "selective"
    /// on every block would not fit.
    pub selective_blocks: Option<usize>,
    /// Use the fused CUDA kernels (RMSNorm, RoPE, SwiGLU, attention, cross-entropy) on the GPU; false runs
    /// the plain candle ops everywhere (for comparisons). No effect on the CPU. Held by the run's models
    /// and optimiser (`kernels::Kernels`), not by the process.
    pub fused_kernels: bool,
}

impl Default for RuntimeSection {
    fn default() -> Self {
        RuntimeSection {
            eval_every: 20,
            plugin_timeout_s: 10.0,
            plugin_compile_s: 60.0,
            plugin_memory_mb: 512,
            plugin_fuel: 0,
            progress: true,
            log_every: 10,
            log_every_s: 60.0,
            tensorboard: false,
            fused_kernels: true,
            activation_checkpointing: ActivationCheckpointing::Auto,
            selective_blocks: None,
        }
    }
}

pub use crate::model::activation_memory::ActivationCheckpointing;

impl RunConfig {
    /// Range checks that serde cannot express; errors name the key.
    pub fn validate(&self) -> Result<()> {
        let t = &self.training;
        let checks: [(bool, &str); 13] = [
            (
                t.max_grad_norm >= 0.0 && t.max_grad_norm.is_finite(),
                "training.max_grad_norm must be ≥ 0 (0: no clipping)",
            ),
            (
                t.max_skipped_steps >= 1,
                "training.max_skipped_steps must be ≥ 1",
            ),
            (t.steps > 0, "training.steps must be ≥ 1"),
            (t.batch_size > 0, "training.batch_size must be ≥ 1"),
            (t.grad_accum > 0, "training.grad_accum must be ≥ 1"),
            (t.lr > 0.0 && t.lr.is_finite(), "training.lr must be > 0"),
            (
                (0.0..=1.0).contains(&t.warmup_ratio),
                "training.warmup_ratio must be in [0, 1]",
            ),
            (
                (0.0..=1.0).contains(&t.min_lr_ratio),
                "training.min_lr_ratio must be in [0, 1]",
            ),
            (
                (0.0..1.0).contains(&self.data.val_fraction),
                "data.val_fraction must be in [0, 1)",
            ),
            (self.data.max_length >= 2, "data.max_length must be ≥ 2"),
            (
                self.runtime.plugin_timeout_s > 0.0 && self.runtime.plugin_timeout_s < 1e9,
                "runtime.plugin_timeout_s must be > 0 (seconds)",
            ),
            (
                self.runtime.plugin_compile_s > 0.0 && self.runtime.plugin_compile_s < 1e9,
                "runtime.plugin_compile_s must be > 0 (seconds)",
            ),
            (
                self.runtime.selective_blocks.is_none()
                    || self.runtime.activation_checkpointing == ActivationCheckpointing::Selective,
                "runtime.selective_blocks applies only to runtime.activation_checkpointing = \"selective\"",
            ),
        ];
        for (ok, msg) in checks {
            if !ok {
                bail!("{msg}");
            }
        }
        // checked even when LoRA is off, so a typo never waits for the day it is switched on
        self.lora.validate().context("[lora]")?;
        Ok(())
    }

    /// The resolved config as TOML text.
    pub fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string(self)?)
    }
}

/// One `[[stages]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSection {
    /// A name for logs (default `stage-N`, 1-based).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Optimizer steps of this stage (≥ 1).
    pub steps: u64,
    /// Trained groups (default: `training.trainable`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trainable: Option<Vec<ParamGroup>>,
    /// Parameter-name prefixes narrowing them (default: `training.trainable_prefixes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trainable_prefixes: Option<Vec<String>>,
    /// Peak learning rate (default: `training.lr`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// Warm-up share of the stage's steps (default: `training.warmup_ratio`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup_ratio: Option<f64>,
    /// Final lr / peak lr of the stage (default: `training.min_lr_ratio`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_lr_ratio: Option<f64>,
}

impl StageSection {
    /// The `[training]` section this stage trains with: its own keys over the run's, `steps` the stage's.
    pub fn training(&self, base: &TrainingSection) -> TrainingSection {
        let mut t = base.clone();
        t.steps = self.steps;
        if let Some(g) = &self.trainable {
            t.trainable = g.clone();
        }
        if let Some(p) = &self.trainable_prefixes {
            t.trainable_prefixes = p.clone();
        }
        t.lr = self.lr.unwrap_or(t.lr);
        t.warmup_ratio = self.warmup_ratio.unwrap_or(t.warmup_ratio);
        t.min_lr_ratio = self.min_lr_ratio.unwrap_or(t.min_lr_ratio);
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_overrides_and_errors_name_the_key() {
        let c = RunConfig::load(
            None,
            &[
                "training.steps=5".into(),
                "lora.rank=4".into(),
                "plugin.k_percent=0.3".into(),
            ],
        )
        .unwrap();
        assert_eq!((c.training.steps, c.lora.rank), (5, 4));
        assert_eq!(c.plugin["k_percent"].as_float(), Some(0.3));
        let e = format!(
            "{:#}",
            RunConfig::load(None, &["training.stepz=5".into()]).unwrap_err()
        );
        assert!(e.contains("stepz"), "{e}");
        let e = format!(
            "{:#}",
            RunConfig::load(None, &["training.steps=\"many\"".into()]).unwrap_err()
        );
        assert!(e.contains("steps") || e.contains("invalid type"), "{e}");
        let e = format!(
            "{:#}",
            RunConfig::load(None, &["training.lr=-1".into()]).unwrap_err()
        );
        assert!(e.contains("training.lr"), "{e}");
        let e = format!(
            "{:#}",
            RunConfig::load(None, &["lora.target_modules=[\"qkv\"]".into()]).unwrap_err()
        );
        assert!(e.contains("qkv"), "{e}");
        let back: RunConfig = toml::from_str(&c.to_toml().unwrap()).unwrap();
        assert_eq!(back.training.steps, 5);
    }

    /// `runtime.selective_blocks` only with "selective" (it would silently do nothing otherwise), and it
    /// survives the resolved config's round trip.
    #[test]
    fn selective_blocks_needs_selective() {
        for mode in ["auto", "blocks", "none"] {
            let set = [
                format!("runtime.activation_checkpointing=\"{mode}\""),
                "runtime.selective_blocks=4".into(),
            ];
            let e = format!("{:#}", RunConfig::load(None, &set).unwrap_err());
            assert!(e.contains("runtime.selective_blocks"), "{mode}: {e}");
        }
        let c = RunConfig::load(
            None,
            &[
                "runtime.activation_checkpointing=\"selective\"".into(),
                "runtime.selective_blocks=4".into(),
            ],
        )
        .unwrap();
        let back: RunConfig = toml::from_str(&c.to_toml().unwrap()).unwrap();
        assert_eq!(back.runtime.selective_blocks, Some(4));
    }
}
