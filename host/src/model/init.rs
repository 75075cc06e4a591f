//! Seeded random weights for a model shape (tests, the built-in presets, `random` extra heads):
//! linear weights ~ N(0, 0.02²), norm weights 1.

use super::ModelArgs;
use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use std::collections::HashMap;

/// N(0, std²) samples from a seeded stream, as an f32 tensor of `shape`: `rand_distr`'s ziggurat
/// standard normal in f32 (a few ns a sample, against ~35 ns for Box–Muller with f64 sin, cos and ln —
/// which made random init most of a preset's start-up).
pub fn normal_tensor(rng: &mut ChaCha8Rng, shape: &[usize], std: f64) -> Result<Tensor> {
    normal_tensor_as(rng, shape, std, DType::F32)
}

/// [`normal_tensor`]'s samples stored as `dtype` (bf16 and f16 rounded from each f32 sample as it is
/// drawn: the same values as drawing in f32 and casting, without the f32 copy).
pub fn normal_tensor_as(
    rng: &mut ChaCha8Rng,
    shape: &[usize],
    std: f64,
    dtype: DType,
) -> Result<Tensor> {
    let std = std as f32;
    let draw = || std * rng.sample::<f32, _>(StandardNormal);
    match dtype {
        DType::BF16 => draws_as(shape, draw, half::bf16::from_f32),
        DType::F16 => draws_as(shape, draw, half::f16::from_f32),
        _ => draws_as(shape, draw, |x| x)?
            .to_dtype(dtype)
            .map_err(Into::into),
    }
}

/// A tensor of `shape` filled with draws, each converted by `to` (the f32 → bf16/f16 rounding a cast
/// does) as it is drawn.
fn draws_as<T: candle_core::WithDType>(
    shape: &[usize],
    mut draw: impl FnMut() -> f32,
    to: fn(f32) -> T,
) -> Result<Tensor> {
    let v: Vec<T> = (0..shape.iter().product()).map(|_| to(draw())).collect();
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

/// A full random checkpoint in Meta key names for `args`, reproducible from `seed`: every tensor draws
/// from its own stream (seeded by `seed` and its name), so the tensors are generated in parallel on all
/// cores.
pub fn random_weights(
    args: &ModelArgs,
    seed: u64,
    dtype: DType,
) -> Result<HashMap<String, Tensor>> {
    random_weights_where(args, seed, dtype, &|_| true)
}

/// [`random_weights`] with only the tensors `draw` names drawn (each the same values as in the full
/// checkpoint: its stream depends on the seed and its name alone); the others are placeholders — one
/// zero broadcast to the shape, no memory. FSDP start-up draws just the tensors a rank's shards read
/// (`parallel::fsdp::names_in_shard`), so W launched ranks share the work of one instead of each
/// drawing the whole model.
pub fn random_weights_where(
    args: &ModelArgs,
    seed: u64,
    dtype: DType,
    draw: &(dyn Fn(&str) -> bool + Sync),
) -> Result<HashMap<String, Tensor>> {
    let (d, v, f) = (args.dim, args.vocab_size, args.hidden_dim());
    let kv = args.kv_heads() * args.head_dim();
    // (name, shape, std); std 0 = ones (norm gains)
    let mut plan: Vec<(String, Vec<usize>, f64)> = vec![
        ("tok_embeddings.weight".into(), vec![v, d], 1.0),
        ("norm.weight".into(), vec![d], 0.0),
        ("output.weight".into(), vec![v, d], 0.02),
    ];
    let blocks = (0..=args.n_trunk())
        .map(|i| format!("layers.{i}."))
        .chain((0..args.n_future_tokens - 1).map(|j| format!("extra_heads.{j}.")));
    for prefix in blocks {
        for (name, shape) in [
            ("attention.wq", [d, d]),
            ("attention.wk", [kv, d]),
            ("attention.wv", [kv, d]),
            ("attention.wo", [d, d]),
            ("feed_forward.w1", [f, d]),
            ("feed_forward.w2", [d, f]),
            ("feed_forward.w3", [f, d]),
        ] {
            plan.push((format!("{prefix}{name}.weight"), shape.to_vec(), 0.02));
        }
        for name in ["attention_norm", "ffn_norm"] {
            plan.push((format!("{prefix}{name}.weight"), vec![d], 0.0));
        }
    }
    let (mut plan, skipped): (Vec<_>, Vec<_>) =
        plan.into_iter().partition(|(name, _, _)| draw(name));
    let out = skipped
        .into_iter()
        .map(|(name, shape, _)| Ok((name, placeholder(&shape, dtype)?)))
        .collect::<Result<Vec<_>>>()?;
    // largest first, spread over the cores
    plan.sort_by_key(|(_, s, _)| std::cmp::Reverse(s.iter().product::<usize>()));
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let made: Vec<Vec<(String, Tensor)>> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..workers.min(plan.len()))
            .map(|_| {
                sc.spawn(|| -> Result<Vec<(String, Tensor)>> {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((name, shape, std)) = plan.get(i) else {
                            return Ok(out);
                        };
                        let t = if *std == 0.0 {
                            Tensor::ones(shape.as_slice(), dtype, &Device::Cpu)?
                        } else {
                            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ name_hash(name));
                            normal_tensor_as(&mut rng, shape, *std, dtype)?
                        };
                        out.push((name.clone(), t));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("random init worker panicked")))
            })
            .collect::<Result<Vec<_>>>()
    })?;
    Ok(made.into_iter().flatten().chain(out).collect())
}

/// Whether `t` is a [`placeholder`] (or any broadcast of one value): more than one element, all strides
/// zero.
pub fn is_placeholder(t: &Tensor) -> bool {
    t.elem_count() > 1 && t.stride().iter().all(|&s| s == 0)
}

/// A tensor of `shape` that costs no memory: one zero broadcast (stride 0) — stands for a weight that
/// is never read (see [`random_weights_where`]).
pub fn placeholder(shape: &[usize], dtype: DType) -> Result<Tensor> {
    Ok(Tensor::zeros((), dtype, &Device::Cpu)?.broadcast_as(shape)?)
}

/// FNV-1a of a tensor name: the per-tensor stream of [`random_weights`].
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The samples are N(0, std²): mean, standard deviation and the share within one std of 0 (68.27%)
    /// of a million draws; bf16 draws are the f32 ones rounded; the same seed gives the same tensor,
    /// another seed another.
    #[test]
    fn normal_tensor_draws_a_seeded_normal_distribution() -> Result<()> {
        let draw = |seed| normal_tensor(&mut ChaCha8Rng::seed_from_u64(seed), &[1000, 1000], 0.02);
        let v: Vec<f32> = draw(7)?.flatten_all()?.to_vec1()?;
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let sd = (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        let within = v.iter().filter(|x| x.abs() < 0.02).count() as f64 / n;
        assert!(mean.abs() < 1e-4, "mean {mean}");
        assert!((sd - 0.02).abs() < 1e-4, "sd {sd}");
        assert!(
            (within - 0.6827).abs() < 0.003,
            "share within one sd {within}"
        );
        // drawn as bf16: the f32 draws rounded
        let bf = normal_tensor_as(
            &mut ChaCha8Rng::seed_from_u64(7),
            &[1000, 1000],
            0.02,
            DType::BF16,
        )?;
        let rounded = Tensor::new(v.as_slice(), &Device::Cpu)?.to_dtype(DType::BF16)?;
        assert_eq!(
            bf.flatten_all()?.to_vec1::<half::bf16>()?,
            rounded.to_vec1::<half::bf16>()?
        );
        let again: Vec<f32> = draw(7)?.flatten_all()?.to_vec1()?;
        let other: Vec<f32> = draw(8)?.flatten_all()?.to_vec1()?;
        assert_eq!(v, again);
        assert_ne!(v, other);
        Ok(())
    }
}
