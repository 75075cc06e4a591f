//! The block-wise engine's gradients equal plain candle autograd on the whole graph (f32, 1e-5), for full
//! fine-tuning and for LoRA, with value-head coefficients too; with `detach_extra_heads`, they equal
//! autograd of head 0's and the value's terms for everything but heads 1..H−1, and of the extra heads'
//! terms for those heads' own parameters.

use crate::common;

use candle_core::{DType, Device, Tensor, D};
use rand::{Rng, SeedableRng};
use wmtp_host::data::MicroBatch;
use wmtp_host::model::grads::Grads;
use wmtp_host::model::{
    ForwardCtx, LoraConfig, ModelArgs, ParamGroup, Transformer, ValueHead, ValueHeadConfig,
    VisitParams,
};
use wmtp_host::train::engine::Engine;
use wmtp_plugin_host::ce_mask;

struct Case {
    tokens: Tensor,
    target: Vec<u8>,
    c_ce: Vec<f32>,
    c_v: Vec<f32>,
}

fn case(args: &ModelArgs, b: usize, t: usize, seed: u64) -> Case {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let tokens: Vec<u32> = (0..b * t)
        .map(|_| rng.random_range(0..args.vocab_size as u32))
        .collect();
    let mut target = vec![0u8; b * t];
    for s in 0..b {
        let start = 2 + s; // prompt prefix
        let end = t - s; // right padding
        for p in start..end {
            target[s * t + p] = 1;
        }
    }
    let h = args.n_future_tokens;
    let m = ce_mask(&target, b, t, h);
    let c_ce = m
        .iter()
        .map(|&v| {
            if v != 0 {
                rng.random_range(-1.0..1.0)
            } else {
                0.0
            }
        })
        .collect();
    let c_v = target
        .iter()
        .map(|&v| {
            if v != 0 {
                rng.random_range(-1.0..1.0)
            } else {
                0.0
            }
        })
        .collect();
    Case {
        tokens: Tensor::from_vec(tokens, (b, t), &Device::Cpu).unwrap(),
        target,
        c_ce,
        c_v,
    }
}

/// S = Σ c_ce·CE + Σ c_v·V on the whole graph, differentiated by candle in one go.
fn whole_graph(m: &Transformer, vh: &ValueHead, c: &Case) -> Grads {
    let (b, t) = c.tokens.dims2().unwrap();
    let h = m.args.n_future_tokens;
    let ctx = ForwardCtx::eval();
    let bi = m.block_inputs(t).unwrap();
    let x = m.trunk(&c.tokens, &bi, &ctx).unwrap();
    let toks: Vec<u32> = c.tokens.flatten_all().unwrap().to_vec1().unwrap();
    let mut s = Tensor::zeros((), DType::F32, &Device::Cpu).unwrap();
    for k in 0..h {
        let z = m.head(k).forward(&x, &bi.rope, &bi.mask, &ctx).unwrap();
        let logits = m
            .logits(&z, &ctx)
            .unwrap()
            .reshape((b * t, m.args.vocab_size))
            .unwrap();
        let logp = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
        let tg: Vec<u32> = (0..b * t)
            .map(|r| {
                if r % t + k + 1 < t {
                    toks[r + k + 1]
                } else {
                    0
                }
            })
            .collect();
        let picked = logp
            .gather(
                &Tensor::new(tg, &Device::Cpu).unwrap().unsqueeze(1).unwrap(),
                1,
            )
            .unwrap()
            .squeeze(1)
            .unwrap();
        let coef: Vec<f32> = (0..b * t).map(|r| c.c_ce[r * h + k]).collect();
        let term = (picked.neg().unwrap() * Tensor::new(coef, &Device::Cpu).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        s = (s + term).unwrap();
    }
    let v = vh.forward(&m.norm.forward(&x).unwrap(), &ctx).unwrap();
    s = (s
        + (v * Tensor::from_slice(&c.c_v, (b, t), &Device::Cpu).unwrap())
            .unwrap()
            .sum_all()
            .unwrap())
    .unwrap();
    let store = s.backward().unwrap();
    let mut g = Grads::default();
    g.absorb(m, "", &store).unwrap();
    g.absorb(vh, "value_head.", &store).unwrap();
    g
}

/// The reference gradients with the extra heads detached: every parameter outside `extra_heads.` from
/// the terms of head 0 and the value head only, each extra head's own parameters from the heads' terms.
fn detached_reference(m: &Transformer, vh: &ValueHead, c: &Case) -> Grads {
    let h = m.args.n_future_tokens;
    let only = |keep_head0: bool| Case {
        tokens: c.tokens.clone(),
        target: c.target.clone(),
        c_ce: (0..c.c_ce.len())
            .map(|i| {
                if (i % h == 0) == keep_head0 {
                    c.c_ce[i]
                } else {
                    0.0
                }
            })
            .collect(),
        c_v: if keep_head0 {
            c.c_v.clone()
        } else {
            vec![0.0; c.c_v.len()]
        },
    };
    let (main, heads) = (
        whole_graph(m, vh, &only(true)),
        whole_graph(m, vh, &only(false)),
    );
    let mut g = Grads::default();
    let main_part = main
        .by_name
        .iter()
        .filter(|(n, _)| !n.starts_with("extra_heads."));
    let heads_part = heads
        .by_name
        .iter()
        .filter(|(n, _)| n.starts_with("extra_heads."));
    for (name, t) in main_part.chain(heads_part) {
        g.add(name, t).unwrap();
    }
    g
}

fn compare(m: Transformer, label: &str) {
    compare_with(m, label, false)
}

fn compare_with(mut m: Transformer, label: &str, detach_extra_heads: bool) {
    let vh = ValueHead::new(&ValueHeadConfig::default(), m.args.dim, 1, &Device::Cpu).unwrap();
    // non-zero LoRA B and value weights so every gradient path carries signal
    let mut i = 0u64;
    m.visit_mut("", &mut |name, p| {
        if name.ends_with("lora_B.weight") {
            i += 1;
            let n = p.numel();
            let v: Vec<f32> = (0..n)
                .map(|j| (((j as u64 + i * 31) % 17) as f32 - 8.0) * 0.01)
                .collect();
            p.set_value(Tensor::from_vec(v, p.tensor().shape(), &Device::Cpu).unwrap())
                .unwrap();
        }
    });
    let c = case(&m.args, 3, 14, 7);
    let reference = if detach_extra_heads {
        detached_reference(&m, &vh, &c)
    } else {
        whole_graph(&m, &vh, &c)
    };
    // with activation checkpointing ("blocks": recomputed), without ("none": kept), selective, and
    // selective on some blocks only: the first trunk block; the whole trunk and the first head
    use wmtp_host::train::config::ActivationCheckpointing;
    let n_trunk = m.layers.len() - 1;
    for (checkpointing, selective_blocks) in [
        (ActivationCheckpointing::Blocks, None),
        (ActivationCheckpointing::None, None),
        (ActivationCheckpointing::Selective, None),
        (ActivationCheckpointing::Selective, Some(1)),
        (ActivationCheckpointing::Selective, Some(n_trunk + 1)),
    ] {
        let label = format!(
            "{label} (activation checkpointing: {checkpointing:?}, selective blocks {selective_blocks:?})"
        );
        let engine = Engine {
            model: &m,
            value_head: Some(&vh),
            chunk_rows: 7,
            seed: 0,
            train: false,
            checkpointing,
            selective_blocks,
            strategy: &wmtp_host::parallel::strategy::NoSharding,
            detach_extra_heads,
        };
        let mb = MicroBatch {
            tokens: c.tokens.clone(),
            target_mask: c.target.clone(),
            rewards: None,
            pair_ids: None,
        };
        let st = engine.forward(&mb).unwrap();
        let mut ours = Grads::default();
        engine
            .backward(&st, &c.c_ce, Some(&c.c_v), &mut ours)
            .unwrap();
        assert_eq!(
            ours.by_name.keys().collect::<Vec<_>>(),
            reference.by_name.keys().collect::<Vec<_>>(),
            "{label}: the same parameters must get gradients"
        );
        assert!(!ours.by_name.is_empty());
        for (name, g) in &reference.by_name {
            let d = common::max_abs_diff(g, &ours.by_name[name]);
            let scale = g
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                d <= 1e-5 * scale.max(1.0),
                "{label}: {name}: max |Δgrad| {d} (grad scale {scale})"
            );
        }
        check_ce(&m, &st);
    }
}

fn check_ce(m: &Transformer, st: &wmtp_host::train::engine::ForwardState) {
    // the per-token CE the engine reports equals −log p on the whole graph
    let h = m.args.n_future_tokens;
    assert_eq!(st.ce.len(), 3 * 14 * h);
    assert!(st
        .ce
        .iter()
        .zip(&st.ce_mask)
        .all(|(&x, &mk)| (mk == 0) == (x == 0.0) && x >= 0.0));
}

#[test]
fn full_fine_tuning_gradients_match_autograd() {
    let mut m = Transformer::random(
        ModelArgs::preset("tiny").unwrap(),
        3,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    m.set_trainable_groups(&[ParamGroup::Trunk, ParamGroup::Heads])
        .unwrap();
    compare(m, "full");
}

#[test]
fn lora_gradients_match_autograd() {
    let mut m = Transformer::random(
        ModelArgs::preset("tiny").unwrap(),
        3,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    m.add_lora(
        &LoraConfig {
            target_modules: vec!["all-linear".into()],
            ..Default::default()
        },
        4,
    )
    .unwrap();
    compare(m, "lora");
}

#[test]
fn heads_only_gradients_match_autograd() {
    let mut m = Transformer::random(
        ModelArgs::preset("tiny").unwrap(),
        5,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    m.set_trainable_groups(&[ParamGroup::Heads]).unwrap();
    compare(m, "heads");
}

#[test]
fn detached_extra_heads_gradients_match_autograd_of_their_own_terms() {
    let full = |seed| {
        let mut m = Transformer::random(
            ModelArgs::preset("tiny").unwrap(),
            seed,
            DType::F32,
            &Device::Cpu,
        )
        .unwrap();
        m.set_trainable_groups(&[ParamGroup::Trunk, ParamGroup::Heads])
            .unwrap();
        m
    };
    compare_with(full(6), "full, detached", true);
    let mut m = full(7);
    m.add_lora(
        &LoraConfig {
            target_modules: vec!["all-linear".into()],
            ..Default::default()
        },
        8,
    )
    .unwrap();
    // LoRA everywhere and the heads' full weights beside it (`trainable = ["lora", "heads"]`)
    m.set_trainable_groups(&[ParamGroup::Lora, ParamGroup::Heads])
        .unwrap();
    compare_with(m, "lora + full heads, detached", true);
}
