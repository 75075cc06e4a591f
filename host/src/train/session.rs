//! A training session's parts, built from a run config and a pipeline plugin: the model (LoRA or full,
//! trainable groups from the plugin's manifest unless the config says otherwise), the value head, the
//! reference model, the plugin, the tokenizer, the training and validation data, and the optimiser.

use super::config::RunConfig;
use super::optim::{AdamW, AdamWConfig, GroupSettings, Schedule};
use crate::data::batcher::{make_items, Batcher, Items, Sampling};
use crate::data::dataset::{encode_all, parse_jsonl, read_jsonl, Sample};
use crate::data::Tokenizer;
use crate::model::load::{load_model, LoadOptions};
use crate::model::{ParamGroup, Transformer, ValueHead};
use crate::plugin::{InputKind, Plugin, PluginLimits, PluginRuntime};
use anyhow::{bail, Context, Result};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The bundled default corpus (data/arith.jsonl, CC0).
pub const BUILTIN_ARITH: &str = include_str!("../../../data/arith.jsonl");

/// Everything a run needs.
pub struct Session {
    /// The resolved configuration.
    pub cfg: RunConfig,
    /// The pipeline plugin file.
    pub pipeline_path: PathBuf,
    /// The policy.
    pub model: Transformer,
    /// The value head, when the plugin needs values.
    pub value_head: Option<ValueHead>,
    /// The frozen reference, when the plugin needs reference losses.
    pub reference: Option<Transformer>,
    /// The frozen critic (model, value head), when `critic.checkpoint` is set.
    pub critic: Option<(Transformer, ValueHead)>,
    /// The plugin.
    pub plugin: Plugin,
    /// Tokenizer of the model (the byte tokenizer for presets).
    pub tokenizer: Tokenizer,
    /// Training batches.
    pub batcher: Batcher,
    /// Validation items.
    pub val: Items,
    /// Samples dropped by the length filter (train, validation).
    pub dropped: (usize, usize),
    /// The optimiser.
    pub optimizer: AdamW,
    /// Trained groups.
    pub groups: BTreeSet<ParamGroup>,
    /// Where the model came from (adapter base id).
    pub source: String,
}

/// The candle dtype named in the config.
pub fn dtype_of(s: &str) -> Result<candle_core::DType> {
    Ok(match s {
        "f32" => candle_core::DType::F32,
        "bf16" => candle_core::DType::BF16,
        "f16" => candle_core::DType::F16,
        _ => bail!("model.dtype: unknown dtype `{s}` (f32, bf16, f16)"),
    })
}

/// How a run's `[model]` section loads its model onto `device`.
pub fn load_options(cfg: &RunConfig, device: &candle_core::Device) -> Result<LoadOptions> {
    Ok(LoadOptions {
        dtype: dtype_of(&cfg.model.dtype)?,
        device: device.clone(),
        n_future_tokens: cfg.model.n_future_tokens,
        extra_heads: cfg.model.extra_heads_init,
        seed: cfg.training.seed,
    })
}

/// Rows of `spec`: a JSONL path, or `builtin:arith`.
pub fn dataset_rows(spec: &str) -> Result<Vec<crate::data::dataset::Row>> {
    match spec {
        "builtin:arith" => parse_jsonl(BUILTIN_ARITH, "builtin:arith"),
        p => read_jsonl(Path::new(p)),
    }
}

/// Splits samples by problem: a `frac` share of problems (deterministic by hash) goes to validation.
fn split_by_problem(samples: Vec<Sample>, frac: f64) -> (Vec<Sample>, Vec<Sample>) {
    let held = |p: &str| (crate::model::transformer::fnv1a(p) % 10_000) as f64 / 10_000.0 < frac;
    samples.into_iter().partition(|s| !held(&s.problem))
}

impl Session {
    /// Builds a session. `fresh` = false skips LoRA initialisation (a resume loads the adapter itself).
    pub fn new(cfg: RunConfig, pipeline_path: &Path) -> Result<Self> {
        let rt_limits = PluginLimits {
            call_timeout: Duration::from_secs_f64(cfg.runtime.plugin_timeout_s),
            memory_bytes: cfg.runtime.plugin_memory_mb << 20,
            ..Default::default()
        };
        let runtime = Arc::new(PluginRuntime::new(rt_limits)?);
        let mut plugin = Plugin::load(&runtime, pipeline_path)?;
        let table = toml::to_string(&cfg.plugin)?;
        plugin.configure(&table)?;
        let manifest = plugin.manifest().clone();

        let device = crate::cli::parse_device(&cfg.model.device).context("model.device")?;
        let opts = load_options(&cfg, &device)?;
        let lm = load_model(&cfg.model.path, &opts)?;
        let tokenizer = lm.tokenizer.unwrap_or_else(Tokenizer::bytes);
        if tokenizer.vocab_size() > lm.model.args.vocab_size {
            bail!(
                "the tokenizer has {} tokens but model `{}` only {}",
                tokenizer.vocab_size(),
                cfg.model.path,
                lm.model.args.vocab_size
            );
        }
        let mut model = lm.model;

        // trained groups: the config's list, else the manifest's (LoRA replaces trunk/heads when on)
        let wanted: Vec<ParamGroup> = if cfg.training.trainable.is_empty() {
            manifest
                .trains
                .iter()
                .map(|g| ParamGroup::from(*g))
                .collect()
        } else {
            cfg.training
                .trainable
                .iter()
                .map(|g| group_named(g))
                .collect::<Result<_>>()?
        };
        let mut groups: BTreeSet<ParamGroup> = BTreeSet::new();
        for g in wanted {
            match (g, cfg.training.use_lora) {
                (ParamGroup::Lora, true) | (ParamGroup::ValueHead, _) => {
                    groups.insert(g);
                }
                (ParamGroup::Heads | ParamGroup::Trunk, false) => {
                    groups.insert(g);
                }
                (ParamGroup::Heads | ParamGroup::Trunk, true) => {
                    groups.insert(ParamGroup::Lora);
                }
                (ParamGroup::Lora, false) => {}
            }
        }
        if cfg.training.use_lora && groups.contains(&ParamGroup::Lora) {
            model.add_lora(&cfg.lora, cfg.training.seed)?;
        }
        model.set_trainable_groups(
            &groups
                .iter()
                .copied()
                .filter(|g| *g != ParamGroup::ValueHead)
                .collect::<Vec<_>>(),
        )?;
        let needs = |k: InputKind| manifest.needs.contains(&k);
        let critic = if needs(InputKind::Values) && !cfg.critic.checkpoint.is_empty() {
            Some(frozen_critic(Path::new(&cfg.critic.checkpoint), &device)?)
        } else {
            None
        };
        let value_head = if needs(InputKind::Values) && critic.is_none() {
            let mut vh = ValueHead::new(
                &cfg.value_head,
                model.args.dim,
                cfg.training.seed ^ 0x5641,
                &device,
            )?;
            if !groups.contains(&ParamGroup::ValueHead) {
                crate::model::VisitParams::visit_mut(&mut vh, "", &mut |_, p| {
                    let _ = p.set_trainable(false);
                });
            }
            Some(vh)
        } else {
            None
        };

        // data
        let rows = dataset_rows(&cfg.data.train)?;
        let (samples, dropped_train) = encode_all(&tokenizer, &rows, cfg.data.max_length)
            .with_context(|| format!("dataset {}", cfg.data.train))?;
        let (train, val, dropped_val) = if cfg.data.validation.is_empty() {
            let (t, v) = split_by_problem(samples, cfg.data.val_fraction);
            (t, v, 0)
        } else {
            let vrows = dataset_rows(&cfg.data.validation)?;
            let (v, d) = encode_all(&tokenizer, &vrows, cfg.data.max_length)?;
            (samples, v, d)
        };
        // SPEC §7: pointwise pipelines train on correct samples; reward users see both labels
        let paired = if needs(InputKind::Pairs) {
            Sampling::Pairs
        } else if needs(InputKind::Rewards) {
            Sampling::All
        } else {
            Sampling::CorrectOnly
        };
        let items = make_items(
            train,
            paired,
            cfg.data.max_pairs_per_problem,
            cfg.training.seed,
        )?;
        let val_items = if val.is_empty() {
            Items::Single(vec![])
        } else {
            make_items(
                val,
                paired,
                cfg.data.max_pairs_per_problem,
                cfg.training.seed,
            )
            .unwrap_or(Items::Single(vec![]))
        };
        let batcher = Batcher::new(items, cfg.training.batch_size, cfg.training.seed, 0, 1)?;

        let t = &cfg.training;
        let gs = GroupSettings {
            lr: t.lr,
            weight_decay: t.weight_decay,
        };
        let mut group_map = HashMap::from([
            (ParamGroup::Lora, gs),
            (ParamGroup::Heads, gs),
            (ParamGroup::Trunk, gs),
        ]);
        group_map.insert(
            ParamGroup::ValueHead,
            GroupSettings {
                lr: t.value_head_lr.unwrap_or(t.lr),
                weight_decay: t.weight_decay,
            },
        );
        let schedule = Schedule {
            total_steps: t.steps,
            warmup_ratio: t.warmup_ratio,
            min_lr_ratio: t.min_lr_ratio,
        };
        let optimizer = AdamW::new(AdamWConfig::default(), group_map, schedule);

        let reference = if needs(InputKind::Reference) {
            Some(super::reference::reference_model(&cfg, &opts)?)
        } else {
            None
        };
        Ok(Session {
            source: lm.source,
            cfg,
            pipeline_path: pipeline_path.to_path_buf(),
            model,
            value_head,
            reference,
            critic,
            plugin,
            tokenizer,
            batcher,
            val: val_items,
            dropped: (dropped_train, dropped_val),
            optimizer,
            groups,
        })
    }
}

/// The group named in a config.
pub fn group_named(s: &str) -> Result<ParamGroup> {
    Ok(match s {
        "lora" => ParamGroup::Lora,
        "value_head" => ParamGroup::ValueHead,
        "heads" => ParamGroup::Heads,
        "trunk" => ParamGroup::Trunk,
        _ => bail!("unknown parameter group `{s}`"),
    })
}

/// Loads a critic run's checkpoint as a frozen critic: its model (LoRA merged) and its value head.
pub fn frozen_critic(
    ckpt: &Path,
    device: &candle_core::Device,
) -> Result<(Transformer, ValueHead)> {
    let (cfg, _) = super::checkpoint::read_meta(ckpt).context("critic.checkpoint")?;
    let opts = load_options(&cfg, device)?;
    let (mut model, vh) = if ckpt.join("adapter").exists() {
        let mut m = load_model(&cfg.model.path, &opts)?.model;
        let vh = crate::model::adapter::load_adapter(&ckpt.join("adapter"), &mut m)?;
        m.set_lora_merged(true)?;
        (m, vh)
    } else {
        let dir = ckpt.join("model");
        let m = load_model(
            dir.to_str().unwrap_or_default(),
            &LoadOptions {
                n_future_tokens: None,
                ..opts
            },
        )?
        .model;
        let f = dir.join("value_head.safetensors");
        let mut t = crate::model::load::meta::read_safetensors(&f)?;
        let mut vh = ValueHead::new(&cfg.value_head, m.args.dim, 0, device)?;
        vh.set_weights(&mut |n| t.remove(n).and_then(|x| x.to_device(device).ok()))
            .with_context(|| format!("loading {}", f.display()))?;
        (m, Some(vh))
    };
    let Some(mut vh) = vh else {
        bail!(
            "critic.checkpoint {}: the checkpoint has no value head (not a critic run?)",
            ckpt.display()
        )
    };
    model.set_trainable_groups(&[])?;
    crate::model::VisitParams::visit_mut(&mut vh, "", &mut |_, p| {
        let _ = p.set_trainable(false);
    });
    Ok((model, vh))
}

impl Session {
    /// The models a step reads, the plugin and batcher it mutates, and the validation items (disjoint
    /// borrows of the session).
    pub fn step_parts(&mut self) -> (super::step::Models<'_>, &mut Plugin, &mut Batcher, &Items) {
        let m = super::step::Models {
            model: &self.model,
            value_head: self.value_head.as_ref(),
            reference: self.reference.as_ref(),
            critic: self.critic.as_ref().map(|(m, v)| (m, v)),
            chunk_rows: self.cfg.training.chunk_rows,
        };
        (m, &mut self.plugin, &mut self.batcher, &self.val)
    }

    /// Validation on the session's held-out items (None without any).
    pub fn validate(&mut self) -> Result<Option<super::step::Validation>> {
        let (batch, pad) = (
            self.cfg.training.batch_size,
            self.tokenizer.eos_id.unwrap_or(0),
        );
        let (m, plugin, _, val) = self.step_parts();
        super::step::evaluate(&m, plugin, val, batch, pad)
    }
}
