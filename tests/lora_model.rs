//! LoRA on the whole Transformer: trainable sets per mode, counts against design.md §3's formula, backward
//! creating gradients for LoRA parameters only, and adapter / full-checkpoint save → load round trips.

use crate::common;

use candle_core::{DType, Device, Tensor};
use common::{max_abs_diff, values};
use wmtp_host::formats::adapter::{load_adapter, save_adapter, save_full};
use wmtp_host::formats::load::{load_model, LoadOptions};
use wmtp_host::model::{
    ForwardCtx, LoraConfig, ModelArgs, ParamGroup, Transformer, ValueHead, ValueHeadConfig,
    ValueHeadKind, VisitParams,
};

fn tiny() -> Transformer {
    Transformer::random(
        ModelArgs::preset("tiny").unwrap(),
        11,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap()
}

fn tokens() -> Tensor {
    Tensor::new(
        &[
            [1u32, 7, 99, 3, 250, 17, 8, 2],
            [1, 400, 5, 5, 6, 300, 12, 9],
        ],
        &Device::Cpu,
    )
    .unwrap()
}

/// Gives every B matrix non-zero values so adapters change the output.
fn perturb_b(m: &mut Transformer) {
    let mut i = 0u64;
    m.visit_mut("", &mut |name, p| {
        if name.ends_with("lora_B.weight") {
            i += 1;
            let (o, r) = p.tensor().dims2().unwrap();
            let v: Vec<f32> = (0..o * r)
                .map(|j| ((j as u64 * 31 + i * 7) % 13) as f32 * 0.01 - 0.06)
                .collect();
            p.set_value(Tensor::from_vec(v, (o, r), &Device::Cpu).unwrap())
                .unwrap();
        }
    });
}

#[test]
fn trainable_counts_match_formula_per_mode() {
    for targets in [
        vec!["wq", "wk", "wv", "wo"],
        vec!["all-linear"],
        vec!["w2", "wq"],
    ] {
        let cfg = LoraConfig {
            rank: 4,
            alpha: 8.0,
            target_modules: targets.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let mut m = tiny();
        let base_total = m.args.param_counts().total();
        assert_eq!(
            m.param_counts(),
            (base_total, 0),
            "a loaded model starts frozen"
        );
        m.add_lora(&cfg, 1).unwrap();
        let formula = cfg.trainable_count(&m.args).unwrap();
        assert_eq!(
            m.param_counts(),
            (base_total + formula, formula),
            "targets {targets:?}"
        );
        m.visit("", &mut |name, p| {
            assert_eq!(p.is_trainable(), name.contains("lora_"), "{name}")
        });
    }
    // LoRA + value head
    let mut m = tiny();
    m.add_lora(&LoraConfig::default(), 1).unwrap();
    let vh = ValueHead::new(
        &ValueHeadConfig {
            kind: ValueHeadKind::Mlp,
            ..Default::default()
        },
        m.args.dim,
        0,
        &Device::Cpu,
    )
    .unwrap();
    let vh_count: usize = vh.named_params().iter().map(|(_, p)| p.numel()).sum();
    let d = m.args.dim;
    assert_eq!(
        vh_count,
        d * (d / 4) + d / 4 + (d / 4) * (d / 8) + d / 8 + d / 8 + 1
    );
    // full fine-tuning
    let mut m = tiny();
    m.set_trainable_groups(&[ParamGroup::Trunk, ParamGroup::Heads])
        .unwrap();
    let (t, tr) = m.param_counts();
    assert_eq!(t, tr);
    // heads only: the head blocks, norm and output
    let mut m = tiny();
    m.set_trainable_groups(&[ParamGroup::Heads]).unwrap();
    let c = m.args.param_counts();
    assert_eq!(m.param_counts().1, c.heads + c.norm_and_output);
}

#[test]
fn lora_backward_creates_no_gradient_for_frozen_weights() {
    let mut m = tiny();
    m.add_lora(
        &LoraConfig {
            target_modules: vec!["all-linear".into()],
            ..Default::default()
        },
        5,
    )
    .unwrap();
    perturb_b(&mut m);
    let logits = m.forward(&tokens(), &ForwardCtx::train(1)).unwrap();
    let loss = logits
        .iter()
        .map(|l| l.sqr().unwrap().mean_all().unwrap())
        .reduce(|a, b| (a + b).unwrap())
        .unwrap();
    let grads = loss.backward().unwrap();
    let mut with_grad = 0;
    m.visit("", &mut |name, p| {
        let g = grads.get(p.tensor());
        if p.group() == ParamGroup::Lora {
            assert!(g.is_some(), "LoRA parameter {name} got no gradient");
            with_grad += 1;
        } else {
            assert!(g.is_none(), "frozen weight {name} got a gradient tensor");
        }
    });
    assert_eq!(with_grad, 2 * 7 * m.args.n_layers);
}

#[test]
fn adapter_round_trip_gives_identical_logits() {
    let dir = common::tempdir();
    let mut m = tiny();
    m.add_lora(
        &LoraConfig {
            rank: 4,
            rslora: true,
            target_modules: vec!["wq".into(), "wv".into(), "w2".into()],
            ..Default::default()
        },
        9,
    )
    .unwrap();
    perturb_b(&mut m);
    let vh = ValueHead::new(
        &ValueHeadConfig {
            kind: ValueHeadKind::Mlp,
            bias_init: 0.25,
            ..Default::default()
        },
        m.args.dim,
        4,
        &Device::Cpu,
    )
    .unwrap();
    save_adapter(dir.path(), &m, Some(&vh), "tiny").unwrap();
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["target_modules"], serde_json::json!(["wq", "wv", "w2"]));
    assert_eq!(cfg["use_rslora"], true);
    assert_eq!(cfg["base_model_name_or_path"], "tiny");
    assert_eq!(cfg["wmtp_format_version"], 1);

    let mut fresh = tiny();
    let vh2 = load_adapter(dir.path(), &mut fresh)
        .unwrap()
        .expect("value head saved alongside");
    let ctx = ForwardCtx::eval();
    let (a, b) = (
        m.forward(&tokens(), &ctx).unwrap(),
        fresh.forward(&tokens(), &ctx).unwrap(),
    );
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(
            values(x),
            values(y),
            "logits must be bit-identical after adapter reload"
        );
    }
    let base = tiny().forward(&tokens(), &ctx).unwrap();
    assert!(
        max_abs_diff(&a[0], &base[0]) > 1e-4,
        "the adapter must matter for this test to mean anything"
    );
    let h = m.norm.forward(&m.embed(&tokens()).unwrap()).unwrap();
    assert_eq!(
        values(&vh.forward(&h, &ctx).unwrap()),
        values(&vh2.forward(&h, &ctx).unwrap())
    );
}

#[test]
fn adapter_key_errors_are_clear() {
    let dir = common::tempdir();
    let mut m = tiny();
    m.add_lora(&LoraConfig::default(), 9).unwrap();
    save_adapter(dir.path(), &m, None, "tiny").unwrap();
    let file = dir.path().join("adapter_model.safetensors");
    let original = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    let key = "base_model.model.layers.1.attention.wk.lora_A.weight";

    let mut missing = original.clone();
    missing.remove(key);
    candle_core::safetensors::save(&missing, &file).unwrap();
    let err = format!("{:#}", load_adapter(dir.path(), &mut tiny()).unwrap_err());
    assert!(err.contains("missing") && err.contains(key), "{err}");

    let mut extra = original.clone();
    extra.insert(
        "base_model.model.layers.1.feed_forward.w1.lora_A.weight".into(),
        Tensor::zeros((8, 64), DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&extra, &file).unwrap();
    let err = format!("{:#}", load_adapter(dir.path(), &mut tiny()).unwrap_err());
    assert!(
        err.contains("not in the model") && err.contains("w1.lora_A"),
        "{err}"
    );

    let mut shaped = original.clone();
    shaped.insert(
        key.into(),
        Tensor::zeros((4, 64), DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&shaped, &file).unwrap();
    let err = format!("{:#}", load_adapter(dir.path(), &mut tiny()).unwrap_err());
    assert!(err.contains(key) && err.contains("shape"), "{err}");
}

#[test]
fn full_checkpoint_round_trip_has_lora_merged() {
    let dir = common::tempdir();
    let mut m = tiny();
    m.add_lora(&LoraConfig::default(), 2).unwrap();
    perturb_b(&mut m);
    save_full(dir.path(), &m, None).unwrap();
    let back = load_model(dir.path().to_str().unwrap(), &LoadOptions::default())
        .unwrap()
        .model;
    assert!(back.lora.is_none());
    let ctx = ForwardCtx::eval();
    let (a, b) = (
        m.forward(&tokens(), &ctx).unwrap(),
        back.forward(&tokens(), &ctx).unwrap(),
    );
    for (x, y) in a.iter().zip(&b) {
        assert!(max_abs_diff(x, y) < 1e-4, "{}", max_abs_diff(x, y));
    }
}
