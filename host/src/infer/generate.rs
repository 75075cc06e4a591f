//! Text generation with head 0: [`generate`] (KV-cached, greedy or sampled with temperature, top-p and
//! a seed, stop conditions) and [`greedy_continue`] (full recomputation per token: the reference the
//! cached decoder is tested against).

use crate::model::{ForwardCtx, Transformer};
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
    /// Draw from the k most likely tokens only (0: no limit); with top_p, the smaller set.
    pub top_k: usize,
    /// Seed of the draws (the same seed, prompt and model give the same text).
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            seed: 0,
        }
    }
}

impl Sampling {
    /// The kernel's cut (temperature, top-p, top-k) for a sampled (temperature > 0) decode.
    fn cut(&self) -> crate::kernels::sample::Cut {
        crate::kernels::sample::Cut {
            temperature: self.temperature as f32,
            top_p: self.top_p as f32,
            top_k: self.top_k,
        }
    }
}

/// The next token of every row of logits [B, V], chosen on the logits' device: the argmax at temperature
/// 0, else a draw from softmax(logits / temperature) cut to its top-k and top-p nucleus
/// ([`crate::kernels::sample`]) with one uniform number from each row's generator in `rngs`. Only those
/// B numbers go to the device and B ids come back.
pub fn pick_rows(
    logits: &Tensor,
    s: &Sampling,
    rngs: &mut [rand_chacha::ChaCha8Rng],
) -> Result<Vec<u32>> {
    use rand::Rng;
    if s.temperature <= 0.0 {
        return Ok(logits.argmax(candle_core::D::Minus1)?.to_vec1()?);
    }
    let u: Vec<f32> = rngs.iter_mut().map(|r| r.random::<f32>()).collect();
    let u = Tensor::new(u.as_slice(), logits.device())?;
    Ok(crate::kernels::sample::sample_rows(logits, &u, s.cut())?.to_vec1()?)
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
    /// Prompts decoded together as one batch (left-padded; 1: one after another). A batch ends when all
    /// its rows have, or when its longest padded row reaches the model's max_seq_len.
    pub batch: usize,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new: 32,
            eos: None,
            sampling: Sampling::default(),
            batch: 1,
        }
    }
}

/// Continues each of `prompts` with head 0, KV-cached (prefill, then one position per token): the new
/// tokens of each. A sequence ends at `max_new` tokens, at EOS, at the model's max_seq_len, or when
/// `stop(prompt index, new tokens)` says so (stop strings). Prompts run `opts.batch` at a time; prompt
/// i's draws come from seed `sampling.seed + i` whatever the batching.
pub fn generate(
    model: &Transformer,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
    stop: &mut dyn FnMut(usize, &[u32]) -> bool,
) -> Result<Vec<Vec<u32>>> {
    generate_with_progress(model, prompts, opts, stop, &mut |_, _| {})
}

/// [`generate`], calling `progress(done, total)` after every batch (long HumanEval or distillation runs).
pub fn generate_with_progress(
    model: &Transformer,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
    stop: &mut dyn FnMut(usize, &[u32]) -> bool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<Vec<u32>>> {
    if let Some(i) = prompts.iter().position(Vec::is_empty) {
        bail!("prompt {i} is empty");
    }
    let mut out = Vec::with_capacity(prompts.len());
    for (c, chunk) in prompts.chunks(opts.batch.max(1)).enumerate() {
        let first = c * opts.batch.max(1);
        out.extend(generate_batch(model, chunk, first, opts, stop)?);
        progress(out.len(), prompts.len());
    }
    Ok(out)
}

/// [`generate`] of one batch of prompts, the first being prompt `first`.
fn generate_batch(
    model: &Transformer,
    prompts: &[Vec<u32>],
    first: usize,
    opts: &GenerateOptions,
    stop: &mut dyn FnMut(usize, &[u32]) -> bool,
) -> Result<Vec<Vec<u32>>> {
    use rand::SeedableRng;
    let b = prompts.len();
    let mut new = vec![Vec::new(); b];
    if opts.max_new == 0 {
        return Ok(new);
    }
    let mut rngs: Vec<_> = (0..b)
        .map(|r| {
            rand_chacha::ChaCha8Rng::seed_from_u64(
                opts.sampling.seed.wrapping_add((first + r) as u64),
            )
        })
        .collect();
    let (mut dec, mut logits) = super::kv_cache::Decoder::new_batch(model, prompts)?;
    let mut done = vec![false; b];
    loop {
        let picked = pick_rows(&logits, &opts.sampling, &mut rngs)?;
        let mut next = vec![0u32; b];
        for r in 0..b {
            if done[r] {
                // a finished row keeps being fed (its output is ignored)
                next[r] = new[r].last().copied().unwrap_or(prompts[r][0]);
                continue;
            }
            let t = picked[r];
            new[r].push(t);
            next[r] = t;
            done[r] =
                Some(t) == opts.eos || new[r].len() == opts.max_new || stop(first + r, &new[r]);
        }
        if done.iter().all(|&d| d) || dec.len() >= model.args.max_seq_len {
            break;
        }
        logits = dec.feed_rows(&next)?;
    }
    Ok(new)
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
                ..Default::default()
            };
            let cached = generate(&m, std::slice::from_ref(&prompt), &opts, &mut |_, _| false)?;
            assert_eq!(cached[0], reference[prompt.len()..], "prompt {prompt:?}");
        }
        Ok(())
    }

    #[test]
    fn a_batch_of_prompts_of_different_lengths_decodes_as_each_alone() -> Result<()> {
        let args = ModelArgs::preset("tiny").expect("tiny preset");
        let m = Transformer::random(args, 3, DType::F32, &Device::Cpu)?;
        let prompts: Vec<Vec<u32>> = vec![
            vec![5],
            (0..40).collect(),
            vec![1, 2, 3, 4, 5, 6, 7],
            vec![9, 9],
        ];
        // the logits of each row equal the row's own decoder's
        let (mut dec, logits) = crate::infer::kv_cache::Decoder::new_batch(&m, &prompts)?;
        let mut alone: Vec<_> = prompts
            .iter()
            .map(|_| crate::infer::kv_cache::Decoder::new(&m))
            .collect();
        let mut want: Vec<Tensor> = prompts
            .iter()
            .zip(&mut alone)
            .map(|(p, d)| d.feed(p))
            .collect::<Result<_>>()?;
        let mut got = logits;
        for step in 0..6u32 {
            for (r, w) in want.iter().enumerate() {
                let d = (got.get(r)? - w)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(d < 1e-4, "step {step}, row {r}: logits differ by {d}");
            }
            let next: Vec<u32> = (0..prompts.len() as u32)
                .map(|r| (7 * r + step) % 200)
                .collect();
            got = dec.feed_rows(&next)?;
            want = alone
                .iter_mut()
                .zip(&next)
                .map(|(d, &t)| d.feed(&[t]))
                .collect::<Result<_>>()?;
        }
        // greedy and sampled generation: the same tokens batched as one at a time, stops per row
        for sampling in [
            Sampling::default(),
            Sampling {
                temperature: 0.8,
                top_p: 0.9,
                top_k: 0,
                seed: 3,
            },
        ] {
            let one = GenerateOptions {
                max_new: 16,
                eos: Some(17),
                sampling,
                batch: 1,
            };
            let four = GenerateOptions { batch: 4, ..one };
            let three = GenerateOptions { batch: 3, ..one };
            let stop = |i: usize, new: &[u32]| i == 2 && new.len() == 5;
            let a = generate(&m, &prompts, &one, &mut |i, n| stop(i, n))?;
            assert_eq!(a[2].len(), 5);
            assert_eq!(generate(&m, &prompts, &four, &mut |i, n| stop(i, n))?, a);
            assert_eq!(generate(&m, &prompts, &three, &mut |i, n| stop(i, n))?, a);
        }
        Ok(())
    }

    /// [`pick_rows`] for one row of logits.
    fn pick(logits: &[f32], s: &Sampling, rng: &mut rand_chacha::ChaCha8Rng) -> Result<u32> {
        let t = Tensor::new(logits, &Device::Cpu)?.unsqueeze(0)?;
        Ok(pick_rows(&t, s, std::slice::from_mut(rng))?[0])
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
            top_k: 0,
            seed: 0,
        };
        assert!((0..50).all(|_| pick(&logits, &s, &mut rng).unwrap() == 1));
        // full nucleus at T = 1: frequencies follow the softmax
        let s = Sampling {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
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
