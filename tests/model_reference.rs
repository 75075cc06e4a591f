//! The Transformer against an independent NumPy forward (tests/fixtures/make_tiny_checkpoints.py), loaded
//! from a hand-written PyTorch zip checkpoint (Meta keys, a bf16 tensor) and from HF-named safetensors
//! with rotate-half q/k; head parallelism; extra-head initialisation.

use crate::common;

use candle_core::{Device, Tensor};
use common::{fixture, max_abs_diff};
use wmtp_host::formats::load::{load_model, ExtraHeadsInit, LoadOptions};
use wmtp_host::model::{ForwardCtx, VisitParams};

fn reference() -> (Tensor, Vec<Tensor>) {
    let text = std::fs::read_to_string(fixture("fixtures/tiny_reference.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let tokens: Vec<Vec<u32>> = serde_json::from_value(v["tokens"].clone()).unwrap();
    let logits: Vec<Vec<Vec<Vec<f32>>>> = serde_json::from_value(v["logits"].clone()).unwrap();
    let tokens = Tensor::new(tokens, &Device::Cpu).unwrap();
    let logits = logits
        .into_iter()
        .map(|h| Tensor::new(h, &Device::Cpu).unwrap())
        .collect();
    (tokens, logits)
}

#[test]
fn meta_pth_checkpoint_matches_numpy_reference() {
    let path = fixture("fixtures/tiny_meta");
    let lm = load_model(path.to_str().unwrap(), &LoadOptions::default()).unwrap();
    assert_eq!(lm.model.args.n_future_tokens, 2);
    assert_eq!(lm.model.extra_heads.len(), 1);
    let (tokens, want) = reference();
    let got = lm.model.forward(&tokens, &ForwardCtx::eval()).unwrap();
    assert_eq!(got.len(), 2);
    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
        let d = max_abs_diff(g, w);
        eprintln!("head {k}: max |Δlogit| vs NumPy = {d:e}");
        assert!(d < 2e-4, "head {k}: max |Δlogit| = {d}");
    }
}

#[test]
fn hf_checkpoint_converts_to_the_same_logits() {
    let meta = load_model(
        fixture("fixtures/tiny_meta").to_str().unwrap(),
        &LoadOptions::default(),
    )
    .unwrap();
    let hf_path = fixture("fixtures/tiny_hf");
    let hf = load_model(hf_path.to_str().unwrap(), &LoadOptions::default()).unwrap();
    assert_eq!(hf.model.args.n_future_tokens, 1);
    let (tokens, want) = reference();
    let ctx = ForwardCtx::eval();
    let h = hf.model.forward(&tokens, &ctx).unwrap();
    assert!(
        max_abs_diff(&h[0], &want[0]) < 2e-4,
        "HF head 0 vs reference: {}",
        max_abs_diff(&h[0], &want[0])
    );
    let m = meta.model.forward(&tokens, &ctx).unwrap();
    assert!(max_abs_diff(&h[0], &m[0]) < 1e-5);

    // widened to 3 heads, copies of head 0 predict exactly what head 0 does
    let opts = LoadOptions {
        n_future_tokens: Some(3),
        ..Default::default()
    };
    let wide = load_model(hf_path.to_str().unwrap(), &opts).unwrap();
    assert_eq!(wide.model.args.n_layers, 5);
    let w = wide.model.forward(&tokens, &ctx).unwrap();
    assert_eq!(w.len(), 3);
    assert_eq!(common::values(&w[0]), common::values(&w[1]));
    assert_eq!(common::values(&w[0]), common::values(&w[2]));
    assert!(max_abs_diff(&w[0], &h[0]) == 0.0);

    let opts = LoadOptions {
        n_future_tokens: Some(2),
        extra_heads: ExtraHeadsInit::Random,
        seed: 3,
        ..Default::default()
    };
    let r = load_model(hf_path.to_str().unwrap(), &opts)
        .unwrap()
        .model
        .forward(&tokens, &ctx)
        .unwrap();
    assert!(max_abs_diff(&r[0], &h[0]) == 0.0 && max_abs_diff(&r[1], &h[0]) > 1e-3);

    // a checkpoint that already has 2 heads cannot be silently re-shaped
    let opts = LoadOptions {
        n_future_tokens: Some(3),
        ..Default::default()
    };
    let err = load_model(fixture("fixtures/tiny_meta").to_str().unwrap(), &opts).unwrap_err();
    assert!(format!("{err:#}").contains("only a next-token"), "{err:#}");
}

#[test]
fn heads_are_parallel_on_the_trunk_output() {
    let lm = load_model(
        fixture("fixtures/tiny_meta").to_str().unwrap(),
        &LoadOptions::default(),
    )
    .unwrap();
    let (tokens, _) = reference();
    let ctx = ForwardCtx::eval();
    let before = lm.model.forward(&tokens, &ctx).unwrap();
    let mut m = lm.model.clone();
    m.visit_mut("", &mut |name, p| {
        if name.starts_with("extra_heads.0.") {
            let t = (p.tensor() * 3.0).unwrap();
            p.set_value(t).unwrap();
        }
    });
    let after = m.forward(&tokens, &ctx).unwrap();
    assert_eq!(
        common::values(&before[0]),
        common::values(&after[0]),
        "head 1's weights changed head 0's logits"
    );
    assert!(
        max_abs_diff(&before[1], &after[1]) > 1e-2,
        "head 1's logits must change"
    );
}
