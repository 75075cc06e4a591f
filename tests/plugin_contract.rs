//! Contract versions: a plugin built against wmtp:pipeline@0.1.0 (the baseline plugin's bytes as they
//! shipped before 0.2.0, `tests/fixtures/baseline-contract-0.1.wasm`) loads and runs unchanged, and
//! answers exactly as the same code built against 0.2.0 does; 0.2.0 plugins get the token ids they ask for.

use crate::common::{root, shipped_plugin};
use std::sync::Arc;
use wmtp_plugin_host::conformance::{check_plugin, synthetic_batch, SHAPES};
use wmtp_plugin_host::{
    describe_manifest, ContractVersion, InputKind, Plugin, PluginLimits, PluginRuntime,
};

fn runtime() -> Arc<PluginRuntime> {
    Arc::new(
        PluginRuntime::with_options(
            PluginLimits::default(),
            Arc::new(|x: &[f64]| Ok(x.to_vec())),
            None,
        )
        .unwrap(),
    )
}

fn baseline_0_1() -> std::path::PathBuf {
    root().join("tests/fixtures/baseline-contract-0.1.wasm")
}

#[test]
fn a_contract_0_1_plugin_loads_and_answers_as_its_0_2_build() {
    let rt = runtime();
    let mut old = Plugin::load(&rt, &baseline_0_1()).unwrap();
    let mut new = Plugin::load(&rt, &shipped_plugin("baseline")).unwrap();
    assert_eq!(old.contract(), ContractVersion::V0_1);
    assert_eq!(new.contract(), ContractVersion::V0_2);
    // a plugin that never asks for the vocabulary does not import it: the host reads no tokenizer for it
    assert!(!old.uses_vocabulary() && !new.uses_vocabulary());
    assert_eq!(old.manifest().needs, new.manifest().needs);
    assert_eq!(old.manifest().trains, new.manifest().trains);
    assert!(describe_manifest(old.manifest(), old.contract()).contains("wmtp:pipeline@0.1.0"));
    let cfg = "head_weights = { decay = 0.5 }";
    old.configure(cfg).unwrap();
    new.configure(cfg).unwrap();
    // every kit shape, with and without token ids in the batch (a 0.1 plugin never sees them)
    for (i, &(b, t, h)) in SHAPES.iter().enumerate() {
        for needs in [vec![], vec![InputKind::Tokens]] {
            let batch = synthetic_batch(b, t, h, &needs, 300 + i as u64, i % 2 == 1);
            for train in [false, true] {
                let (a, c) = (
                    old.weigh(&batch, train).unwrap(),
                    new.weigh(&batch, train).unwrap(),
                );
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&a.ce), bits(&c.ce), "shape {b}×{t}×{h}");
                assert_eq!(a.loss.to_bits(), c.loss.to_bits());
                assert_eq!(a.metrics, c.metrics);
            }
        }
    }
    old.after_step(0).unwrap();
    let state = old.save_state().unwrap();
    old.load_state(&state).unwrap();
}

#[test]
fn a_contract_0_1_plugin_passes_the_conformance_kit() {
    let report = check_plugin(&baseline_0_1(), "", std::time::Duration::from_secs(2)).unwrap();
    assert!(report.passed(), "{report}");
}

#[test]
fn a_plugin_that_needs_tokens_gets_the_batchs_ids_and_the_vocabulary() {
    // the example plugin weighs by token counts and pieces: it refuses a batch without token ids
    let rt = runtime();
    let path = root().join("examples/inverse_frequency.wasm");
    assert!(
        path.exists(),
        "{} missing: run scripts/build-plugins.sh",
        path.display()
    );
    let mut p = Plugin::load(&rt, &path).unwrap();
    assert_eq!(p.contract(), ContractVersion::V0_2);
    assert!(p.uses_vocabulary());
    p.set_vocabulary(Arc::new(vec!["Ġ".into(), "x".into()]));
    p.configure("whitespace_weight = 0").unwrap();
    let mut batch = synthetic_batch(1, 4, 1, &[InputKind::Tokens], 1, false);
    batch.target_mask = vec![1, 1, 1, 1];
    batch.ce_mask = vec![1, 1, 1, 0];
    batch.ce = vec![1.0, 2.0, 3.0, 0.0];
    // targets x[1..4] = [x, Ġ, x]: the whitespace target weighs 0, the two others share the head
    batch.tokens = Some(vec![0, 1, 0, 1]);
    let c = p.weigh(&batch, false).unwrap();
    assert_eq!(c.ce, vec![0.5, 0.0, 0.5, 0.0]);
    assert!((c.loss - 2.0).abs() < 1e-9, "{}", c.loss);
    let mut no_tokens = batch.clone();
    no_tokens.tokens = None;
    let e = format!("{:#}", p.weigh(&no_tokens, false).unwrap_err());
    assert!(e.contains("batch has no tokens"), "{e}");
}
