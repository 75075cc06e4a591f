//! A contract-0.2 plugin that needs token ids trains on the micro-batch's own ids, aligned with its
//! masks, and sees the model's vocabulary: the example inverse-frequency plugin under a recording
//! pipeline wrapper, 3 steps on the bundled arithmetic corpus (byte tokenizer).

use crate::common;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use wmtp_host::train::build::load_plugin;
use wmtp_host::train::config::RunConfig;
use wmtp_host::train::plugin_ranks::PluginRanks;
use wmtp_host::train::session::Session;
use wmtp_host::train::session_step::train_step;
use wmtp_host::train::step::Weigher;
use wmtp_plugin_host::{Batch, Coefficients, Manifest, Plugin};

/// The plugin, recording every training batch it is sent and its answer.
struct Recording {
    inner: Plugin,
    seen: Arc<Mutex<Vec<(Batch, Coefficients)>>>,
}

impl Weigher for Recording {
    fn manifest(&self) -> &Manifest {
        self.inner.manifest()
    }
    fn weigh(&mut self, b: &Batch, train: bool) -> anyhow::Result<Coefficients> {
        let c = self.inner.weigh(b, train)?;
        if train {
            self.seen.lock().unwrap().push((b.clone(), c.clone()));
        }
        Ok(c)
    }
    fn after_step(&mut self, step: u64) -> anyhow::Result<()> {
        self.inner.after_step(step)
    }
    fn save_state(&mut self) -> anyhow::Result<Vec<u8>> {
        self.inner.save_state()
    }
    fn load_state(&mut self, state: &[u8]) -> anyhow::Result<()> {
        self.inner.load_state(state)
    }
}

#[test]
fn a_plugin_that_needs_tokens_gets_the_batchs_own_ids_and_the_vocabulary() {
    let dir = common::tempdir();
    let set: Vec<String> = vec![
        format!("checkpoint.dir={:?}", dir.path().display().to_string()),
        "runtime.eval_every=0".into(),
        "training.batch_size=4".into(),
        // spaces (the byte tokenizer's piece <0x20>) weigh nothing: the vocabulary must have arrived
        "plugin.whitespace_weight=0".into(),
    ];
    let cfg = RunConfig::load(None, &set).unwrap();
    let path = common::root().join("examples/inverse_frequency.wasm");
    assert!(
        path.exists(),
        "{} missing: run scripts/build-plugins.sh",
        path.display()
    );
    let plugin = load_plugin(&cfg, &path, &PluginRanks::default()).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let recording = Recording {
        inner: plugin,
        seen: seen.clone(),
    };
    let mut s = Session::with_weigher(cfg, Box::new(recording), &path).unwrap();
    for step in 0..3 {
        train_step(&mut s, step).unwrap();
    }
    let outputs: HashSet<String> = wmtp_host::train::session::BUILTIN_ARITH
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["output"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let eos = s.tokenizer.eos_id.unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    let mut counted: HashSet<u32> = HashSet::new();
    for (step, (b, c)) in seen.iter().enumerate() {
        let (bs, t, h) = (b.sequences as usize, b.positions as usize, b.heads as usize);
        let x = b.tokens.as_ref().expect("the plugin needs tokens");
        assert_eq!(x.len(), bs * t);
        // each row's trained span is an answer of the corpus, then EOS
        for row in 0..bs {
            let trained: Vec<u32> = (0..t)
                .filter(|&i| b.target_mask[row * t + i] != 0)
                .map(|i| x[row * t + i])
                .collect();
            assert_eq!(trained.last(), Some(&eos), "row {row}");
            let text: Vec<u8> = trained[..trained.len() - 1]
                .iter()
                .map(|&id| id as u8)
                .collect();
            let text = String::from_utf8(text).unwrap();
            assert!(outputs.contains(&text), "step {step} row {row}: {text:?}");
        }
        // head 0's coefficient is 0 exactly where its target is a space
        for row in 0..bs {
            for i in 0..t - 1 {
                let k = (row * t + i) * h;
                if b.ce_mask[k] != 0 {
                    assert_eq!(
                        c.ce[k] == 0.0,
                        x[row * t + i + 1] == 32,
                        "step {step} row {row} t {i}"
                    );
                }
            }
        }
        // the plugin counts what earlier steps trained on: its metric is their distinct ids
        let metric = c
            .metrics
            .iter()
            .find(|(n, _)| n == "distinct_tokens_counted")
            .unwrap()
            .1;
        assert_eq!(metric as usize, counted.len(), "step {step}");
        counted.extend((0..bs * t).filter(|&i| b.target_mask[i] != 0).map(|i| x[i]));
    }
}
