//! Hugging Face layouts: a LoRA run's `wmtp merge --format hf` reloads (through the HF loader, checked
//! against a NumPy reference elsewhere) to the same logits on every head; its `wmtp export --format peft`
//! adapter has PEFT's key names and, applied as PEFT does (W + s·B·A on the rotate-half weights), gives
//! the merged HF weights; `[lora] init_from` on that adapter gives the same model back; a mismatched
//! adapter is refused. (PEFT itself: tests/interop/peft_roundtrip.py.)

use crate::common;

use wmtp_host::checkpoint::export::{export_peft_adapter, merge_checkpoint, MergeFormat};
use wmtp_host::formats::hf_export::import_peft;
use wmtp_host::formats::hf_layout::permute_rotate_half;
use wmtp_host::formats::load::{load_model, LoadOptions};
use wmtp_host::model::{ForwardCtx, LoraConfig, VisitParams};
use wmtp_host::run::{run, RunOptions};

#[test]
fn hf_merge_and_peft_export_round_trip() {
    let dir = common::tempdir();
    let r = run(&RunOptions {
        pipeline: Some(common::root().join("plugins/baseline.wasm")),
        set: vec![
            format!("checkpoint.dir={}", dir.path().display()),
            "training.use_lora=true".into(),
            "lora.target_modules=[\"all-linear\"]".into(),
            "training.steps=3".into(),
            "training.lr=0.02".into(),
        ],
        quiet: true,
        ..Default::default()
    })
    .unwrap();
    let ck = &r.last_checkpoint;
    let opts = LoadOptions {
        seed: 42,
        ..Default::default()
    };
    let trained = wmtp_host::formats::checkpoint::load_trained_for_inference(ck, "tiny", &opts)
        .unwrap()
        .model;
    let tokens = candle_core::Tensor::new(
        &[[256u32, 72, 105, 33, 10, 7, 99]],
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let want = trained.forward(&tokens, &ForwardCtx::eval()).unwrap();

    // merged HF directory → the HF loader: same logits on head 0 and on the extra heads
    let hf = dir.path().join("hf");
    merge_checkpoint(ck, &hf, MergeFormat::Hf).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(hf.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["model_type"], "llama");
    assert_eq!(
        cfg["num_hidden_layers"].as_u64().unwrap() as usize,
        trained.layers.len()
    );
    let back = load_model(hf.to_str().unwrap(), &LoadOptions::default())
        .unwrap()
        .model;
    assert_eq!(back.args.n_future_tokens, trained.args.n_future_tokens);
    let got = back.forward(&tokens, &ForwardCtx::eval()).unwrap();
    for (k, (a, b)) in want.iter().zip(&got).enumerate() {
        let d = common::max_abs_diff(a, b);
        assert!(d < 1e-4, "head {k}: HF merge differs by {d}");
    }

    // PEFT adapter: names, config, and PEFT's merge formula on HF-layout tensors
    let peft = dir.path().join("peft");
    export_peft_adapter(ck, &peft).unwrap();
    let acfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(peft.join("adapter_config.json")).unwrap())
            .unwrap();
    let targets: Vec<&str> = acfg["target_modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        targets,
        [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "down_proj",
            "up_proj"
        ]
    );
    assert_eq!(acfg["peft_type"], "LORA");
    let ad = wmtp_host::formats::meta::read_safetensors(&peft.join("adapter_model.safetensors"))
        .unwrap();
    let merged = wmtp_host::formats::meta::read_safetensors(&hf.join("model.safetensors")).unwrap();
    let base = load_model("tiny", &opts).unwrap().model;
    let base_w: std::collections::HashMap<String, candle_core::Tensor> = base
        .named_params()
        .into_iter()
        .map(|(n, p)| (n, p.tensor().clone()))
        .collect();
    let scale = LoraConfig::default().scale();
    let (nh, nkv) = (base.args.n_heads, base.args.kv_heads());
    for (ours, hf_name, heads) in [
        (
            "layers.0.attention.wq.weight",
            "model.layers.0.self_attn.q_proj",
            Some(nh),
        ),
        (
            "layers.1.attention.wk.weight",
            "model.layers.1.self_attn.k_proj",
            Some(nkv),
        ),
        (
            "layers.0.attention.wv.weight",
            "model.layers.0.self_attn.v_proj",
            None,
        ),
        (
            "layers.1.feed_forward.w2.weight",
            "model.layers.1.mlp.down_proj",
            None,
        ),
    ] {
        let w = &base_w[ours];
        let w_hf = match heads {
            Some(h) => permute_rotate_half(w, h).unwrap(),
            None => w.clone(),
        };
        let a = &ad[&format!("base_model.model.{hf_name}.lora_A.weight")];
        let b = &ad[&format!("base_model.model.{hf_name}.lora_B.weight")];
        let peft_merged = (w_hf + (b.matmul(a).unwrap() * scale).unwrap()).unwrap();
        let d = common::max_abs_diff(&peft_merged, &merged[&format!("{hf_name}.weight")]);
        assert!(d < 1e-5, "{hf_name}: PEFT's W + s·B·A differs by {d}");
        assert!(
            b.abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.0,
            "{hf_name}: B was trained"
        );
    }
    assert!(peft.join("wmtp_extra_heads.safetensors").exists());

    // [lora] init_from: the same model back
    let mut m = load_model("tiny", &opts).unwrap().model;
    let lcfg = LoraConfig {
        target_modules: vec!["all-linear".into()],
        ..Default::default()
    };
    m.add_lora(&lcfg, 7).unwrap();
    import_peft(&peft, &mut m).unwrap();
    let got = m.forward(&tokens, &ForwardCtx::eval()).unwrap();
    for (k, (a, b)) in want.iter().zip(&got).enumerate() {
        let d = common::max_abs_diff(a, b);
        assert!(d < 1e-4, "head {k}: imported adapter differs by {d}");
    }
    // a different rank is refused, naming both
    let mut m = load_model("tiny", &opts).unwrap().model;
    m.add_lora(
        &LoraConfig {
            rank: 4,
            target_modules: vec!["all-linear".into()],
            ..Default::default()
        },
        7,
    )
    .unwrap();
    let e = format!("{:#}", import_peft(&peft, &mut m).unwrap_err());
    assert!(e.contains("r 8") && e.contains("r 4"), "{e}");
}
