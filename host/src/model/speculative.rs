//! Self-speculative greedy decoding with the MTP heads (Gloeckle et al. 2024, §3.2; blockwise parallel
//! decoding, Stern et al. 2018): from the trunk's output at the last accepted position, head 0 gives
//! the next token y₁ (greedy, certain) and heads 1..H−1 draft y₂..y_H. One forward pass over y₁..y_H
//! (trunk and every head, KV-cached) verifies them: head 0 at the position of y_i gives the greedy token
//! after it, p_i, and draft y_{i+1} is accepted while y_{i+1} = p_i. The accepted prefix y₁..y_m is
//! kept, the caches are cut back to it, and p_m with the heads' drafts at y_m's position start the next
//! round. Every token emitted is head 0's greedy choice given the tokens before it, so the output is
//! plain greedy decoding's; a round costs one pass of the trunk and head 0 over H positions (on a GPU
//! about the price of one position) and the extra heads over the accepted ones, and emits 1..H tokens.

use super::generate::GenerateOptions;
use super::kv_cache::{block_cached, positions, BlockCache, Decoder};
use super::{ForwardCtx, Transformer};
use anyhow::{bail, Result};
use candle_core::{DType, Tensor};

/// Acceptance counts of a speculative generation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpeculativeStats {
    /// Forward passes after the prompt's (verification rounds).
    pub rounds: u64,
    /// Tokens emitted.
    pub tokens: u64,
    /// Per head k = 1..H−1 (index k − 1): drafts checked (all drafts before it accepted) and accepted.
    pub checked: Vec<u64>,
    /// See `checked`.
    pub accepted: Vec<u64>,
}

impl SpeculativeStats {
    /// accepted / checked of head k ≥ 1 (`None` when it never drafted a checked token).
    pub fn acceptance(&self, k: usize) -> Option<f64> {
        let c = *self.checked.get(k.checked_sub(1)?)?;
        (c > 0).then(|| self.accepted[k - 1] as f64 / c as f64)
    }

    /// Tokens per forward pass (1 when no draft is ever accepted).
    pub fn tokens_per_round(&self) -> f64 {
        self.tokens as f64 / self.rounds.max(1) as f64
    }
}

/// A decoding session of one sequence: the KV-cached decoder of the trunk and head 0 ([`Decoder`]),
/// which runs on every verified position (rejected ones are cut off after), and caches for the extra
/// heads, which run only on accepted positions, their vocabulary projection only at the last.
struct HeadsDecoder<'a> {
    dec: Decoder<'a>,
    extra: Vec<BlockCache>,
    ctx: ForwardCtx,
}

impl<'a> HeadsDecoder<'a> {
    fn new(model: &'a Transformer) -> Self {
        HeadsDecoder {
            dec: Decoder::new(model),
            extra: vec![BlockCache::default(); model.extra_heads.len()],
            ctx: ForwardCtx::eval(),
        }
    }

    /// Runs `tokens` (the next positions) through the trunk and head 0; returns the trunk's output
    /// [1, Tn, D] and head 0's greedy token at each new position.
    fn feed(&mut self, tokens: &[u32]) -> Result<(Tensor, Vec<u32>)> {
        let (x, z) = self.dec.feed_blocks(tokens)?;
        let logits = self.dec.model().logits(&z, &self.ctx)?;
        let logits = logits.squeeze(0)?.to_dtype(DType::F32)?;
        Ok((x, logits.argmax(1)?.to_vec1::<u32>()?))
    }

    /// Runs the extra heads over the trunk outputs `x` [1, n, D] of positions start.. (the accepted
    /// ones: their caches never hold a rejected position); returns each extra head's greedy token at
    /// the last of them — the drafts of the next round.
    fn draft(&mut self, x: &Tensor, start: usize) -> Result<Vec<u32>> {
        let m = self.dec.model();
        let n = x.dim(1)?;
        let (rope, mask) = positions(m, start, n)?;
        let mut out = Vec::with_capacity(self.extra.len());
        for (head, cache) in m.extra_heads.iter().zip(self.extra.iter_mut()) {
            let z = block_cached(head, x, &rope, &mask, cache, &self.ctx)?;
            let last = z.narrow(1, n - 1, 1)?.contiguous()?;
            let logits = m
                .logits(&last, &self.ctx)?
                .flatten_all()?
                .to_dtype(DType::F32)?;
            out.push(logits.argmax(0)?.to_scalar::<u32>()?);
        }
        Ok(out)
    }
}

/// [`super::generate::generate`]'s greedy decoding done self-speculatively with the MTP heads (see the
/// module doc): the same tokens, fewer forward passes when the heads' drafts are right. Greedy only
/// (`opts.sampling.temperature` must be 0); stop conditions as `generate`'s. Returns the new tokens of
/// each prompt and the acceptance counts over all of them.
pub fn generate_speculative(
    model: &Transformer,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
    stop: &mut dyn FnMut(usize, &[u32]) -> bool,
) -> Result<(Vec<Vec<u32>>, SpeculativeStats)> {
    if opts.sampling.temperature > 0.0 {
        bail!("speculative decoding is greedy: use temperature 0");
    }
    let h = model.args.n_future_tokens;
    let mut stats = SpeculativeStats {
        checked: vec![0; h.saturating_sub(1)],
        accepted: vec![0; h.saturating_sub(1)],
        ..Default::default()
    };
    let mut out = Vec::with_capacity(prompts.len());
    for (i, prompt) in prompts.iter().enumerate() {
        if prompt.is_empty() {
            bail!("prompt {i} is empty");
        }
        let mut dec = HeadsDecoder::new(model);
        let (x, head0) = dec.feed(prompt)?;
        // the next token (head 0) and the drafts after it (heads 1..), at the last position
        let mut cand = vec![head0[prompt.len() - 1]];
        cand.extend(dec.draft(&x, 0)?);
        let mut new: Vec<u32> = Vec::new();
        'seq: while new.len() < opts.max_new {
            let room = model.args.max_seq_len - dec.dec.len();
            if room == 0 {
                // no position left to verify in: y₁ is still head 0's greedy token, as plain decoding's last
                new.push(cand[0]);
                stats.tokens += 1;
                break;
            }
            cand.truncate((opts.max_new - new.len()).min(room));
            let start = dec.dec.len();
            let (x, pred) = dec.feed(&cand)?;
            stats.rounds += 1;
            // accept y₁, then y_{j+1} while it is head 0's greedy token after y_j
            let mut m = 1;
            while m < cand.len() {
                stats.checked[m - 1] += 1;
                if cand[m] != pred[m - 1] {
                    break;
                }
                stats.accepted[m - 1] += 1;
                m += 1;
            }
            for &t in &cand[..m] {
                new.push(t);
                stats.tokens += 1;
                if Some(t) == opts.eos || stop(i, &new) || new.len() == opts.max_new {
                    break 'seq;
                }
            }
            dec.dec.truncate(start + m)?;
            cand = vec![pred[m - 1]];
            if new.len() + 1 < opts.max_new {
                cand.extend(dec.draft(&x.narrow(1, 0, m)?, start)?);
            }
        }
        out.push(new);
    }
    Ok((out, stats))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::generate::{generate, Sampling};
    use crate::model::ModelArgs;
    use candle_core::Device;

    fn opts(max_new: usize) -> GenerateOptions {
        GenerateOptions {
            max_new,
            eos: None,
            sampling: Sampling::default(),
            batch: 1,
        }
    }

    #[test]
    fn speculative_greedy_decoding_gives_plain_greedy_decodings_tokens() -> Result<()> {
        let args = ModelArgs::preset("tiny").expect("tiny preset");
        let m = Transformer::random(args, 3, DType::F32, &Device::Cpu)?;
        let prompts = vec![vec![5u32], vec![1, 2, 3, 4, 5, 6, 7], (0..40).collect()];
        for max_new in [1, 7, 30] {
            let plain = generate(&m, &prompts, &opts(max_new), &mut |_, _| false)?;
            let (spec, stats) =
                generate_speculative(&m, &prompts, &opts(max_new), &mut |_, _| false)?;
            assert_eq!(spec, plain, "max_new {max_new}");
            assert_eq!(
                stats.tokens as usize,
                spec.iter().map(Vec::len).sum::<usize>()
            );
            assert!(stats.rounds <= stats.tokens);
            for k in 1..m.args.n_future_tokens {
                assert!(stats.accepted[k - 1] <= stats.checked[k - 1]);
            }
        }
        Ok(())
    }

    #[test]
    fn heads_that_copy_head_zero_get_their_drafts_accepted_on_a_repeated_token() -> Result<()> {
        // extra heads identical to head 0 draft the same token again: accepted exactly when head 0
        // repeats itself, as a model stuck on one token does
        let args = ModelArgs::preset("tiny").expect("tiny preset");
        let mut m = Transformer::random(args, 3, DType::F32, &Device::Cpu)?;
        let head0 = m.layers[m.layers.len() - 1].clone();
        for h in m.extra_heads.iter_mut() {
            *h = head0.clone();
        }
        let prompts = vec![vec![9u32, 9, 9, 9]];
        let plain = generate(&m, &prompts, &opts(24), &mut |_, _| false)?;
        let (spec, stats) = generate_speculative(&m, &prompts, &opts(24), &mut |_, _| false)?;
        assert_eq!(spec, plain);
        let repeats = plain[0].windows(2).filter(|w| w[0] == w[1]).count() as u64;
        assert!(stats.accepted[0] <= repeats);
        Ok(())
    }

    #[test]
    fn speculative_decoding_refuses_sampling() {
        let args = ModelArgs::preset("tiny").expect("tiny preset");
        let m = Transformer::random(args, 3, DType::F32, &Device::Cpu).unwrap();
        let mut o = opts(4);
        o.sampling.temperature = 0.7;
        assert!(generate_speculative(&m, &[vec![1]], &o, &mut |_, _| false).is_err());
    }
}
