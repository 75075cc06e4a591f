//! The shipped configs parse and their `[plugin]` tables are accepted by their plugins; a LoRA run's
//! adapter reloads to the same validation CE through `wmtp eval`; `wmtp merge` gives a model with the same
//! predictions; `wmtp plot` writes an SVG.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use wmtp_host::model::load::{load_model, LoadOptions};
use wmtp_host::model::{ForwardCtx, VisitParams};
use wmtp_host::train::config::RunConfig;
use wmtp_host::train::evaluate::eval_checkpoint;
use wmtp_host::train::run::{run, RunOptions};
use wmtp_host::train::tools::merge_checkpoint;
use wmtp_plugin_host::{Plugin, PluginLimits, PluginRuntime};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn shipped_configs_are_valid_for_their_plugins() {
    let rt = Arc::new(PluginRuntime::new(PluginLimits::default()).unwrap());
    let mut n = 0;
    for e in std::fs::read_dir(root().join("configs")).unwrap() {
        let path = e.unwrap().path();
        let cfg = RunConfig::load(Some(&path), &[])
            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        let text = std::fs::read_to_string(&path).unwrap();
        let header = text.lines().take(4).collect::<Vec<_>>().join("\n");
        assert!(
            header.contains("wmtp run --pipeline plugins/"),
            "{}: header must give the command",
            path.display()
        );
        let stem = path
            .file_stem()
            .unwrap()
            .to_str()
            .unwrap()
            .trim_end_matches("_lora")
            .to_string();
        let plugin = if stem == "default" {
            "baseline".to_string()
        } else {
            stem
        };
        let mut p = Plugin::load(&rt, &root().join(format!("plugins/{plugin}.wasm"))).unwrap();
        p.configure(&toml::to_string(&cfg.plugin).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        n += 1;
    }
    assert_eq!(n, 9);
}

#[test]
fn adapter_reload_eval_merge_and_plot() {
    let dir = common::tempdir();
    let set = vec![
        format!("checkpoint.dir={}", dir.path().display()),
        "training.use_lora=true".into(),
        "training.steps=6".into(),
        "training.lr=0.01".into(),
        "training.batch_size=4".into(),
        "runtime.eval_every=3".into(),
    ];
    let r = run(&RunOptions {
        pipeline: Some(root().join("plugins/baseline.wasm")),
        set,
        quiet: true,
        ..Default::default()
    })
    .unwrap();
    let val_ce = r.val.unwrap().ce;
    let v = eval_checkpoint(&r.last_checkpoint, None, None).unwrap();
    let (ce, loss) = (v.ce, v.loss);
    // per-head CE: every head has tokens, and the mean over heads is near the batch-averaged `ce`
    assert_eq!(v.ce_heads.len(), 2);
    let mean = v.ce_heads.iter().sum::<f64>() / 2.0;
    assert!(v.ce_heads.iter().all(|c| c.is_finite() && *c > 0.0));
    assert!((mean - ce).abs() < 0.05 * ce, "{:?} vs {ce}", v.ce_heads);
    assert_eq!(
        ce, val_ce,
        "reloaded adapter must give the same validation CE"
    );
    assert!(
        (loss - ce).abs() < 1e-6,
        "baseline's weighted loss is the plain CE: {loss} vs {ce}"
    );

    assert!(dir
        .path()
        .join("checkpoints/best/adapter/adapter_model.safetensors")
        .exists());

    let merged = dir.path().join("merged");
    merge_checkpoint(&r.last_checkpoint, &merged, Default::default()).unwrap();
    let m = load_model(merged.to_str().unwrap(), &LoadOptions::default())
        .unwrap()
        .model;
    assert!(m.lora.is_none());
    let mut lora_model = load_model(
        "tiny",
        &LoadOptions {
            seed: 42,
            ..Default::default()
        },
    )
    .unwrap()
    .model;
    wmtp_host::model::adapter::load_adapter(&r.last_checkpoint.join("adapter"), &mut lora_model)
        .unwrap();
    let tokens =
        candle_core::Tensor::new(&[[256u32, 72, 105, 33, 10, 257]], &candle_core::Device::Cpu)
            .unwrap();
    let a = m.forward(&tokens, &ForwardCtx::eval()).unwrap();
    let b = lora_model.forward(&tokens, &ForwardCtx::eval()).unwrap();
    let d = common::max_abs_diff(&a[0], &b[0]);
    assert!(d < 1e-4, "merged vs adapter logits differ by {d}");
    // `--model CHECKPOINT` (generate, eval --humaneval): the base with the adapter merged, byte tokenizer
    let inf = wmtp_host::model::adapter::load_trained_for_inference(
        &r.last_checkpoint,
        "tiny",
        &LoadOptions {
            seed: 42,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(inf.tokenizer.is_some());
    let c = inf.model.forward(&tokens, &ForwardCtx::eval()).unwrap();
    for (k, (x, y)) in c.iter().zip(&b).enumerate() {
        let d = common::max_abs_diff(x, y);
        assert!(
            d < 1e-4,
            "head {k}: inference loader vs adapter differ by {d}"
        );
    }
    assert!(lora_model
        .named_params()
        .iter()
        .any(|(n, _)| n.contains("lora_B")));

    let svg = wmtp_host::train::plot::plot_run(&r.run_dir).unwrap();
    let text = std::fs::read_to_string(svg).unwrap();
    assert!(text.starts_with("<svg") && text.contains("loss and cross-entropy"));
}

#[test]
fn a_checkpoint_is_scored_by_another_pipeline_on_that_pipelines_samples() {
    // a verifiable run (pairs of correct and incorrect samples, weighted loss), scored by baseline:
    // the baseline plugin's validation (correct samples only, loss = plain CE) of the trained weights
    let dir = common::tempdir();
    let r = run(&RunOptions {
        pipeline: Some(root().join("plugins/verifiable.wasm")),
        set: vec![
            format!("checkpoint.dir={}", dir.path().display()),
            "training.use_lora=true".into(),
            "training.steps=3".into(),
            "training.lr=0.01".into(),
        ],
        quiet: true,
        ..Default::default()
    })
    .unwrap();
    let own = eval_checkpoint(&r.last_checkpoint, None, None).unwrap();
    let by_baseline = eval_checkpoint(
        &r.last_checkpoint,
        None,
        Some(root().join("plugins/baseline.wasm")),
    )
    .unwrap();
    assert!((by_baseline.loss - by_baseline.ce).abs() < 1e-9);
    assert!(
        (own.loss - own.ce).abs() > 1e-3,
        "verifiable weighs its loss"
    );
    // the trained weights are loaded: the untrained model (step 0 of a baseline run on the same data)
    // scores differently on the same samples
    let baseline_run = run(&RunOptions {
        pipeline: Some(root().join("plugins/baseline.wasm")),
        set: vec![
            format!("checkpoint.dir={}", dir.path().join("b").display()),
            "training.use_lora=true".into(),
            "training.steps=1".into(),
            "runtime.eval_every=1".into(),
        ],
        quiet: true,
        ..Default::default()
    })
    .unwrap();
    let first = std::fs::read_to_string(baseline_run.run_dir.join("metrics.jsonl")).unwrap();
    let step0: serde_json::Value = serde_json::from_str(first.lines().next().unwrap()).unwrap();
    assert_eq!(step0["step"], 0);
    let fresh = step0["val_ce"].as_f64().unwrap();
    assert!(
        (fresh - by_baseline.ce).abs() > 1e-4,
        "trained {} vs untrained {fresh}",
        by_baseline.ce
    );
}
