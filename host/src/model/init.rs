//! Seeded random weights for a model shape (tests, the built-in presets, `random` extra heads):
//! linear weights ~ N(0, 0.02²), norm weights 1.

use super::ModelArgs;
use anyhow::Result;
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;

/// N(0, std²) samples from a seeded stream (Box–Muller), as an f32 tensor of `shape`.
pub fn normal_tensor(rng: &mut ChaCha8Rng, shape: &[usize], std: f64) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        let u2: f64 = rng.random();
        let r = (-2.0 * u1.ln()).sqrt() * std;
        v.push((r * (std::f64::consts::TAU * u2).cos()) as f32);
        v.push((r * (std::f64::consts::TAU * u2).sin()) as f32);
    }
    v.truncate(n);
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

/// The tensors of one block under `prefix`, random (linears) and ones (norms).
pub fn random_block(
    args: &ModelArgs,
    prefix: &str,
    rng: &mut ChaCha8Rng,
) -> Result<HashMap<String, Tensor>> {
    let (d, f) = (args.dim, args.hidden_dim());
    let kv = args.kv_heads() * args.head_dim();
    let mut out = HashMap::new();
    for (name, shape) in [
        ("attention.wq", [d, d]),
        ("attention.wk", [kv, d]),
        ("attention.wv", [kv, d]),
        ("attention.wo", [d, d]),
        ("feed_forward.w1", [f, d]),
        ("feed_forward.w2", [d, f]),
        ("feed_forward.w3", [f, d]),
    ] {
        out.insert(
            format!("{prefix}{name}.weight"),
            normal_tensor(rng, &shape, 0.02)?,
        );
    }
    for name in ["attention_norm", "ffn_norm"] {
        out.insert(
            format!("{prefix}{name}.weight"),
            Tensor::ones(d, candle_core::DType::F32, &Device::Cpu)?,
        );
    }
    Ok(out)
}

/// A full random checkpoint in Meta key names for `args`, reproducible from `seed`.
pub fn random_weights(args: &ModelArgs, seed: u64) -> Result<HashMap<String, Tensor>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (d, v) = (args.dim, args.vocab_size);
    let mut out = HashMap::new();
    out.insert(
        "tok_embeddings.weight".into(),
        normal_tensor(&mut rng, &[v, d], 1.0)?,
    );
    for i in 0..=args.n_trunk() {
        out.extend(random_block(args, &format!("layers.{i}."), &mut rng)?);
    }
    for j in 0..args.n_future_tokens - 1 {
        out.extend(random_block(args, &format!("extra_heads.{j}."), &mut rng)?);
    }
    out.insert(
        "norm.weight".into(),
        Tensor::ones(d, candle_core::DType::F32, &Device::Cpu)?,
    );
    out.insert(
        "output.weight".into(),
        normal_tensor(&mut rng, &[v, d], 0.02)?,
    );
    Ok(out)
}
