//! A training session, built from a run config and a pipeline (a plugin, or the native baseline of the
//! automatic reference stage) in the order a recipe reads: the pipeline, the model (LoRA or full; trained
//! groups from the manifest unless the config lists them), the values (own value head or frozen critic),
//! the data, the optimiser, and the reference model when the pipeline needs reference losses.

use super::auto_checkpointing::CheckpointingChoice;
use super::config::{RunConfig, TrainingSection};
use super::plugin_ranks::PluginRanks;
use super::step::{Models, Weigher};
use super::trainable::trained_groups;
use crate::data::batcher::{make_items, Batcher, Items, Sampling};
use crate::data::dataset::{encode_all, parse_jsonl, read_jsonl, Row, Sample};
use crate::data::Tokenizer;
use crate::formats::checkpoint::load_trained;
use crate::formats::load::LoadOptions;
use crate::model::grads::Grads;
use crate::model::{ParamGroup, Transformer, ValueHead, VisitParams};
use crate::optim::{AdamW, AdamWConfig, GroupSettings, Optimizer, Schedule};
use crate::parallel::strategy::{NoSharding, Strategy};
use crate::parallel::{fsdp::Fsdp, Communicator};
use anyhow::{bail, Context, Result};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use wmtp_plugin_host::{InputKind, Manifest};

/// The bundled default corpus (data/arith.jsonl, CC0).
pub const BUILTIN_ARITH: &str = include_str!("../../../data/arith.jsonl");

/// A frozen critic: its model (LoRA merged) and value head.
pub type FrozenCritic = (Transformer, ValueHead);

/// Everything a run needs.
pub struct Session {
    /// The resolved configuration.
    pub cfg: RunConfig,
    /// The pipeline's file (a label for the native baseline).
    pub pipeline_path: PathBuf,
    /// The policy.
    pub model: Transformer,
    /// The device `model.device` opened (once: every tensor of the run uses this one handle — CUDA
    /// handles opened twice count as different devices, and candle copies between them).
    pub device: candle_core::Device,
    /// The value head, when the pipeline needs values and no frozen critic gives them.
    pub value_head: Option<ValueHead>,
    /// The frozen reference, when the pipeline needs reference losses.
    pub reference: Option<Transformer>,
    /// The frozen critic (model, value head), when `critic.checkpoint` is set.
    pub critic: Option<FrozenCritic>,
    /// The pipeline: turns per-token scalars into coefficients.
    pub weigher: Box<dyn Weigher>,
    /// Tokenizer of the model (the byte tokenizer for presets).
    pub tokenizer: Tokenizer,
    /// Training batches.
    pub batcher: Batcher,
    /// Validation items.
    pub val: Items,
    /// Samples dropped by the length filter (train, validation).
    pub dropped: (usize, usize),
    /// The optimiser.
    pub optimizer: Box<dyn Optimizer>,
    /// Gradients of the step being accumulated.
    pub grads: Grads,
    /// Trained groups.
    pub groups: BTreeSet<ParamGroup>,
    /// Where the model came from (adapter base id).
    pub source: String,
    /// How the step spreads over ranks: [`NoSharding`] (one rank, the model holds its weights) until
    /// [`Session::shard`] hands the policy to FSDP, whose shards then hold them (the model's own weights
    /// are released).
    pub strategy: Box<dyn Strategy>,
    /// What training forwards keep for the backward: `runtime.activation_checkpointing`, with "auto"
    /// resolved for this run's device and sizes when the session was built.
    pub checkpointing: CheckpointingChoice,
    /// The ranks the plugin's `all-reduce-sum` sums over (connected by [`Session::shard`]).
    pub plugin_ranks: PluginRanks,
    /// The `[[stages]]` entry being trained (None without stages).
    pub stage: Option<usize>,
    /// Its first optimizer step: the optimiser counts its steps from there.
    pub stage_start: u64,
}

/// The parts of a session one step reads and mutates (disjoint borrows).
pub struct StepParts<'a> {
    /// The models, read-only during forward and backward.
    pub models: Models<'a>,
    /// The pipeline.
    pub weigher: &'a mut dyn Weigher,
    /// Training batches.
    pub batcher: &'a mut Batcher,
    /// Validation items.
    pub val: &'a Items,
    /// Gradient accumulator.
    pub grads: &'a mut Grads,
}

/// How a run's `[model]` section loads its model onto `device` (the opened `model.device`).
pub fn load_options(cfg: &RunConfig, device: &candle_core::Device) -> Result<LoadOptions> {
    Ok(LoadOptions {
        dtype: cfg.model.dtype.into(),
        device: device.clone(),
        n_future_tokens: cfg.model.n_future_tokens,
        extra_heads: cfg.model.extra_heads_init,
        seed: cfg.training.seed,
    })
}

/// Rows of `spec`: a JSONL path, or `builtin:arith`.
pub fn dataset_rows(spec: &str) -> Result<Vec<Row>> {
    match spec {
        "builtin:arith" => parse_jsonl(BUILTIN_ARITH, "builtin:arith"),
        p => read_jsonl(Path::new(p)),
    }
}

impl Session {
    /// Puts a session together around `weigher` (`label` names it in summaries and checkpoints) in the
    /// order a recipe reads, on `device` (`cfg.model.device`, opened once); `shard_place`: (world size,
    /// rank) when the session will be sharded — the policy model is then built in host memory (see
    /// [`Session::new_for`]), and a preset with a frozen base draws only this rank's weights
    /// ([`super::shard_init`]). `reference`: the frozen reference model, built beforehand (train/build.rs),
    /// when the pipeline needs reference losses.
    pub fn assemble(
        cfg: RunConfig,
        weigher: Box<dyn Weigher>,
        label: &Path,
        shard_place: Option<(usize, usize)>,
        device: &candle_core::Device,
        reference: Option<Transformer>,
    ) -> Result<Self> {
        let manifest = weigher.manifest().clone();
        let opts = load_options(&cfg, device)?;
        let policy_opts = if shard_place.is_some() {
            load_options(&cfg, &candle_core::Device::Cpu)?
        } else {
            opts.clone()
        };
        // what step 0 trains: the first stage's settings with [[stages]], else [training]
        let t0 = super::stages::first_training(&cfg);
        let groups = trained_groups(&t0, &manifest);
        let (mut model, tokenizer, source) =
            super::policy::build_policy(&cfg, &manifest, &t0, &groups, &policy_opts, shard_place)?;
        // the run's kernels (runtime.fused_kernels) live in its models and optimiser, not in the process
        let kernels = crate::kernels::Kernels::from_flag(cfg.runtime.fused_kernels);
        model.set_kernels(kernels);
        let (mut value_head, mut critic) =
            setup_values(&cfg, &manifest, &groups, &model, &opts.device)?;
        if let Some(vh) = value_head.as_mut() {
            vh.kernels = kernels;
        }
        if let Some((m, vh)) = critic.as_mut() {
            m.set_kernels(kernels);
            vh.kernels = kernels;
        }
        if cfg.data.pack && cfg.data.max_length > model.args.max_seq_len {
            bail!(
                "data.pack: packed sequences of data.max_length = {} tokens exceed the model's \
                 max_seq_len {}: lower data.max_length",
                cfg.data.max_length,
                model.args.max_seq_len
            );
        }
        let data = setup_data(&cfg, &tokenizer, sampling_for(&manifest))?;
        let optimizer = optimizer_for(&t0, kernels);
        let stage = (!cfg.stages.is_empty()).then_some(0);
        let reference = match (manifest.needs.contains(&InputKind::Reference), reference) {
            (true, Some(mut r)) => {
                r.set_kernels(kernels);
                Some(r)
            }
            (true, None) => bail!(
                "pipeline {} needs reference losses, but no reference model was given",
                label.display()
            ),
            (false, _) => None,
        };
        let checkpointing = super::auto_checkpointing::for_run(
            &cfg,
            &model,
            [reference.as_ref(), critic.as_ref().map(|(m, _)| m)],
            shard_place.map_or(1, |(world, _)| world),
            &opts.device,
        )?;
        Ok(Session {
            checkpointing,
            source,
            device: opts.device.clone(),
            cfg,
            pipeline_path: label.to_path_buf(),
            model,
            value_head,
            reference,
            critic,
            weigher,
            tokenizer,
            batcher: data.batcher,
            val: data.val,
            dropped: data.dropped,
            optimizer,
            grads: Grads::default(),
            groups,
            strategy: Box::new(NoSharding),
            plugin_ranks: PluginRanks::default(),
            stage,
            stage_start: 0,
        })
    }

    /// Shards the policy over the group of `comm` (FSDP FULL_SHARD): every rank of the group calls it
    /// on a session built from the same config, fresh or resumed from a checkpoint (whose optimiser
    /// state, saved unsharded, is cut to this rank's shards: any world size resumes any other's). The
    /// shards go to `model.device` wherever the policy was built (host memory for
    /// [`Session::new_for`]).
    pub fn shard(&mut self, comm: std::sync::Arc<dyn Communicator>) -> Result<()> {
        if self.strategy.sharded() {
            bail!("the session is already sharded");
        }
        if self.model.lora.is_some() {
            let mut full = false;
            self.model.visit("", &mut |_, p| {
                full |= p.is_trainable() && p.group() != ParamGroup::Lora;
            });
            if full {
                bail!(
                    "training.trainable lists `lora` with `heads` or `trunk` (full weights beside the \
                     adapters): not supported in sharded (launched) runs yet"
                );
            }
        }
        self.plugin_ranks.connect(comm.clone())?;
        let (state, step) = self.optimizer.state();
        let masters: HashMap<String, candle_core::Tensor> = state
            .iter()
            .filter_map(|(k, t)| {
                k.strip_prefix("master.")
                    .map(|n| (n.to_string(), t.clone()))
            })
            .collect();
        let mut f = Fsdp::shard(
            &mut self.model,
            comm,
            &masters,
            self.cfg.distributed.sharding,
            &self.device,
        )?;
        f.set_prefetch(self.cfg.distributed.prefetch);
        let state = f.shard_optimizer_state(state, self.optimizer.sharded_slots())?;
        self.optimizer.load_state(state, step)?;
        self.strategy = Box::new(f);
        Ok(())
    }

    /// The models a step reads, the pipeline and batcher it mutates, the validation items and the
    /// gradient accumulator (disjoint borrows of the session).
    pub fn step_parts(&mut self) -> StepParts<'_> {
        StepParts {
            models: Models {
                model: &self.model,
                value_head: self.value_head.as_ref(),
                reference: self.reference.as_ref(),
                critic: self.critic.as_ref().map(|(m, v)| (m, v)),
                chunk_rows: self.cfg.training.chunk_rows,
                checkpointing: self.checkpointing.mode,
                selective_blocks: self.checkpointing.selective_blocks,
                strategy: self.strategy.as_ref(),
                detach_extra_heads: self.cfg.training.detach_extra_heads,
            },
            weigher: self.weigher.as_mut(),
            batcher: &mut self.batcher,
            val: &self.val,
            grads: &mut self.grads,
        }
    }
}

/// The value head (trainable when its group is trained) or, with `critic.checkpoint`, the frozen critic
/// — when the pipeline needs values; neither otherwise.
fn setup_values(
    cfg: &RunConfig,
    manifest: &Manifest,
    groups: &BTreeSet<ParamGroup>,
    model: &Transformer,
    device: &candle_core::Device,
) -> Result<(Option<ValueHead>, Option<FrozenCritic>)> {
    if !manifest.needs.contains(&InputKind::Values) {
        return Ok((None, None));
    }
    if !cfg.critic.checkpoint.is_empty() {
        let critic = frozen_critic(Path::new(&cfg.critic.checkpoint), device)?;
        return Ok((None, Some(critic)));
    }
    let mut vh = ValueHead::new(
        &cfg.value_head,
        model.args.dim,
        cfg.training.seed ^ 0x5641,
        device,
    )?;
    if !groups.contains(&ParamGroup::ValueHead) {
        freeze(&mut vh);
    }
    Ok((Some(vh), None))
}

fn freeze(m: &mut dyn VisitParams) {
    m.visit_mut("", &mut |_, p| {
        let _ = p.set_trainable(false);
    });
}

/// Which samples a pipeline trains on (design.md §7): pairs for paired pipelines, correct and incorrect ones
/// for reward users, the correct ones otherwise.
fn sampling_for(manifest: &Manifest) -> Sampling {
    if manifest.needs.contains(&InputKind::Pairs) {
        Sampling::Pairs
    } else if manifest.needs.contains(&InputKind::Rewards) {
        Sampling::All
    } else {
        Sampling::CorrectOnly
    }
}

/// A session's data: training batches, validation items, samples dropped for length.
struct DataSetup {
    batcher: Batcher,
    val: Items,
    dropped: (usize, usize),
}

/// Whether problem `id` is in the validation share `frac` of problems (deterministic by hash: the same
/// problems for every run, pipeline and seed — never one in both training and validation).
pub fn is_held_out(id: &str, frac: f64) -> bool {
    (crate::model::transformer::fnv1a(id) % 10_000) as f64 / 10_000.0 < frac
}

/// Splits samples by problem: the problems [`is_held_out`] go to validation.
fn split_by_problem(samples: Vec<Sample>, frac: f64) -> (Vec<Sample>, Vec<Sample>) {
    samples
        .into_iter()
        .partition(|s| !is_held_out(&s.problem, frac))
}

fn setup_data(cfg: &RunConfig, tokenizer: &Tokenizer, sampling: Sampling) -> Result<DataSetup> {
    let d = &cfg.data;
    let template = d.template.resolve(tokenizer);
    let rows = dataset_rows(&d.train)?;
    let (samples, dropped_train) = encode_all(tokenizer, &rows, d.max_length, template)
        .with_context(|| format!("dataset {}", d.train))?;
    let (train, val, dropped_val) = if d.validation.is_empty() {
        let (t, v) = split_by_problem(samples, d.val_fraction);
        (t, v, 0)
    } else {
        let vrows = dataset_rows(&d.validation)?;
        let (v, dropped) = encode_all(tokenizer, &vrows, d.max_length, template)
            .with_context(|| format!("dataset {}", d.validation))?;
        (samples, v, dropped)
    };
    let seed = cfg.training.seed;
    let mut items = make_items(train, sampling, d.max_pairs_per_problem, seed)?;
    if d.pack {
        items = match (items, sampling) {
            (Items::Single(v), Sampling::CorrectOnly) => {
                let (n, tokens) = (v.len(), v.iter().map(|s| s.ids.len()).sum::<usize>());
                let packed = crate::data::dataset::pack(v, d.max_length);
                tracing::info!(
                    "data.pack: {n} samples ({tokens} tokens) in {} sequences of ≤ {} tokens ({:.0}% full)",
                    packed.len(),
                    d.max_length,
                    100.0 * tokens as f64 / (packed.len() * d.max_length).max(1) as f64
                );
                Items::Single(packed)
            }
            _ => bail!(
                "data.pack: only pipelines that train on correct samples pointwise (baseline, rho1) can \
                 pack; this one pairs samples or uses their rewards"
            ),
        };
    }
    let val = if val.is_empty() {
        Items::Single(vec![])
    } else {
        make_items(val, sampling, d.max_pairs_per_problem, seed).unwrap_or(Items::Single(vec![]))
    };
    Ok(DataSetup {
        batcher: Batcher::new(items, cfg.training.batch_size, seed)?,
        val,
        dropped: (dropped_train, dropped_val),
    })
}

/// AdamW with the config's peak lr and weight decay per group (the value head may have its own lr) and
/// its warm-up + cosine schedule.
pub fn optimizer_for(t: &TrainingSection, kernels: crate::kernels::Kernels) -> Box<dyn Optimizer> {
    let gs = GroupSettings {
        lr: t.lr,
        weight_decay: t.weight_decay,
    };
    let vh = GroupSettings {
        lr: t.value_head_lr.unwrap_or(t.lr),
        ..gs
    };
    let groups = HashMap::from([
        (ParamGroup::Lora, gs),
        (ParamGroup::Heads, gs),
        (ParamGroup::Trunk, gs),
        (ParamGroup::ValueHead, vh),
    ]);
    let schedule = Schedule {
        total_steps: t.steps,
        warmup_ratio: t.warmup_ratio,
        min_lr_ratio: t.min_lr_ratio,
    };
    Box::new(AdamW::new(AdamWConfig::default(), groups, schedule).with_kernels(kernels))
}

/// Loads a critic run's checkpoint onto `device` as a frozen critic: its model (LoRA merged) and its
/// value head.
pub fn frozen_critic(
    ckpt: &Path,
    device: &candle_core::Device,
) -> Result<(Transformer, ValueHead)> {
    let (cfg, _) = super::config_source::read_meta(ckpt, &[]).context("critic.checkpoint")?;
    let opts = load_options(&cfg, device)?;
    let (mut model, vh) =
        load_trained(ckpt, &cfg.model.path, &opts, &cfg.value_head).context("critic.checkpoint")?;
    model.set_lora_merged(true)?;
    let Some(mut vh) = vh else {
        bail!(
            "critic.checkpoint {}: the checkpoint has no value head (not a critic run?)",
            ckpt.display()
        )
    };
    model.set_trainable_groups(&[])?;
    freeze(&mut vh);
    Ok((model, vh))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_out_problems_are_a_fixed_share_and_the_split_follows_them() {
        let ids: Vec<String> = (0..164).map(|i| format!("HumanEval/{i}")).collect();
        let held = ids.iter().filter(|p| is_held_out(p, 0.1)).count();
        assert!((8..=26).contains(&held), "{held} of 164 held out at 10%");
        assert!(ids
            .iter()
            .all(|p| !is_held_out(p, 0.0) && is_held_out(p, 1.0)));
        let samples: Vec<Sample> = ids
            .iter()
            .map(|p| Sample {
                ids: vec![1],
                mask: vec![1],
                reward: 1.0,
                problem: p.clone(),
            })
            .collect();
        let (train, val) = split_by_problem(samples, 0.1);
        assert_eq!(val.len(), held);
        assert!(val.iter().all(|s| is_held_out(&s.problem, 0.1)));
        assert!(train.iter().all(|s| !is_held_out(&s.problem, 0.1)));
    }
}
