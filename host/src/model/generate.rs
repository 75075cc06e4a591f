//! Text generation with head 0: [`generate`] (KV-cached, greedy or sampled with temperature, top-p and
//! a seed, stop conditions) and [`greedy_continue`] (full recomputation per token: the reference the
//! cached decoder is tested against).

use super::{ForwardCtx, Transformer};
use anyhow::{bail, Result};
use candle_core::{IndexOp, Tensor};

/// Appends up to `max_new` greedily chosen tokens (head 0) to `prompt`, stopping at `eos`.
pub fn greedy_continue(
    model: &Transformer,
    prompt: &[u32],
    max_new: usize,
    eos: Option<u32>,
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        bail!("the prompt is empty");
    }
    let mut tokens = prompt.to_vec();
    let ctx = ForwardCtx::eval();
    for _ in 0..max_new {
        if tokens.len() >= model.args.max_seq_len {
            break;
        }
        let n = tokens.len();
        let input = Tensor::new(tokens.as_slice(), model.device())?.unsqueeze(0)?;
        let bi = model.block_inputs(n)?;
        let h = model.trunk(&input, &bi, &ctx)?;
        // the head block attends over all positions: run it on the whole sequence, keep the last row
        let z = model.head(0).forward(&h, &bi.rope, &bi.mask, &ctx)?;
        let last = model.logits(&z.i((.., n - 1..))?.contiguous()?, &ctx)?;
        let next = last.flatten_all()?.argmax(0)?.to_scalar::<u32>()?;
        tokens.push(next);
        if Some(next) == eos {
            break;
        }
    }
    Ok(tokens)
}

/// How the next token is chosen from head 0's logits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// 0: greedy (argmax); else logits are divided by it before the softmax.
    pub temperature: f64,
    /// Nucleus sampling: draw from the smallest set of most likely tokens whose probability reaches
    /// top_p (1: the whole vocabulary).
    pub top_p: f64,
    /// Seed of the draws (the same seed, prompt and model give the same text).
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

/// The next token from logits [V] (f32): argmax at temperature 0, else a draw from
/// softmax(logits / temperature) cut to its top-p nucleus.
pub fn pick(logits: &[f32], s: &Sampling, rng: &mut rand_chacha::ChaCha8Rng) -> Result<u32> {
    use rand::Rng;
    if logits.is_empty() {
        bail!("no logits to pick from");
    }
    if s.temperature <= 0.0 {
        let (best, _) =
            logits
                .iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
                    if v > bv {
                        (i, v)
                    } else {
                        (bi, bv)
                    }
                });
        return Ok(best as u32);
    }
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut p: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i, ((l as f64 - max) / s.temperature).exp()))
        .collect();
    let z: f64 = p.iter().map(|x| x.1).sum();
    p.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mut kept = Vec::new();
    let mut mass = 0.0;
    for (i, w) in p {
        kept.push((i, w / z));
        mass += w / z;
        if mass >= s.top_p {
            break;
        }
    }
    let mut u = rng.random::<f64>() * mass;
    for &(i, q) in &kept {
        if u < q {
            return Ok(i as u32);
        }
        u -= q;
    }
    Ok(kept.last().map_or(0, |x| x.0) as u32)
}

/// What [`generate`] does.
#[derive(Debug, Clone, Copy)]
pub struct GenerateOptions {
    /// Most new tokens per prompt.
    pub max_new: usize,
    /// End a sequence at this token (kept in the output).
    pub eos: Option<u32>,
    /// Greedy or sampled.
    pub sampling: Sampling,
}

/// Continues each of `prompts` with head 0, KV-cached (prefill, then one position per token): the new
/// tokens of each. A sequence ends at `max_new` tokens, at EOS, at the model's max_seq_len, or when
/// `stop(prompt index, new tokens)` says so (stop strings). Prompts run one after another.
pub fn generate(
    model: &Transformer,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
    stop: &mut dyn FnMut(usize, &[u32]) -> bool,
) -> Result<Vec<Vec<u32>>> {
    use rand::SeedableRng;
    let mut out = Vec::with_capacity(prompts.len());
    for (i, prompt) in prompts.iter().enumerate() {
        if prompt.is_empty() {
            bail!("prompt {i} is empty");
        }
        let mut rng =
            rand_chacha::ChaCha8Rng::seed_from_u64(opts.sampling.seed.wrapping_add(i as u64));
        let mut dec = super::kv_cache::Decoder::new(model);
        let mut logits = dec.feed(prompt)?;
        let mut new = Vec::new();
        while new.len() < opts.max_new {
            let next = pick(&logits.to_vec1::<f32>()?, &opts.sampling, &mut rng)?;
            new.push(next);
            if Some(next) == opts.eos
                || stop(i, &new)
                || dec.len() >= model.args.max_seq_len
                || new.len() == opts.max_new
            {
                break;
            }
            logits = dec.feed(&[next])?;
        }
        out.push(new);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelArgs;
    use candle_core::{DType, Device};
    use rand::SeedableRng;

    #[test]
    fn cached_and_uncached_greedy_decoding_give_the_same_tokens() -> Result<()> {
        let args = ModelArgs::preset("tiny").expect("tiny preset");
        let m = Transformer::random(args, 3, DType::F32, &Device::Cpu)?;
        for prompt in [vec![5u32], vec![1, 2, 3, 4, 5, 6, 7], (0..40).collect()] {
            let reference = greedy_continue(&m, &prompt, 24, None)?;
            let opts = GenerateOptions {
                max_new: 24,
                eos: None,
                sampling: Sampling::default(),
            };
            let cached = generate(&m, std::slice::from_ref(&prompt), &opts, &mut |_, _| false)?;
            assert_eq!(cached[0], reference[prompt.len()..], "prompt {prompt:?}");
        }
        Ok(())
    }

    #[test]
    fn sampling_follows_temperature_top_p_and_seed() -> Result<()> {
        let logits = [0.0f32, 2.0, 1.0, -1.0];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        assert_eq!(pick(&logits, &Sampling::default(), &mut rng)?, 1);
        // top_p small: only the most likely token is left
        let s = Sampling {
            temperature: 1.0,
            top_p: 0.1,
            seed: 0,
        };
        assert!((0..50).all(|_| pick(&logits, &s, &mut rng).unwrap() == 1));
        // full nucleus at T = 1: frequencies follow the softmax
        let s = Sampling {
            temperature: 1.0,
            top_p: 1.0,
            seed: 0,
        };
        let mut counts = [0usize; 4];
        for _ in 0..20_000 {
            counts[pick(&logits, &s, &mut rng)? as usize] += 1;
        }
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        for (i, &c) in counts.iter().enumerate() {
            let want = (logits[i] as f64).exp() / z;
            assert!((c as f64 / 20_000.0 - want).abs() < 0.015, "{counts:?}");
        }
        // the same seed draws the same sequence
        let draw = |seed| {
            let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            (0..20)
                .map(|_| pick(&logits, &s, &mut r).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        Ok(())
    }
}
