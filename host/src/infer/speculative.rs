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
use crate::model::{ForwardCtx, Transformer};
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
///
/// Token ids stay on the model's device between rounds: a round feeds the candidates [1, n] as a
/// device tensor, takes head 0's greedy tokens there (argmax on the device), and the extra heads'
/// drafts for the next round are argmaxed and concatenated there too. The host reads one small
/// vector per round — the candidates it fed and head 0's verdicts, 2n ids — to decide how many are
/// accepted, emit them and cut the caches back (the caches are device buffers; a cut only moves
/// their length).
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

    /// Runs token ids `ids` [1, Tn] (on the device: the next positions) through the trunk and head 0;
    /// returns the trunk's output [1, Tn, D] and head 0's greedy token at each new position, [Tn] u32
    /// on the device.
    fn feed(&mut self, ids: &Tensor) -> Result<(Tensor, Tensor)> {
        let (x, z) = self.dec.feed_ids(ids)?;
        let logits = self.dec.model().logits(&z, &self.ctx)?;
        let greedy = logits.squeeze(0)?.to_dtype(DType::F32)?.argmax(1)?;
        Ok((x, greedy))
    }

    /// Runs the prompt `ids` [1, T] through the trunk and head 0; returns the trunk's output [1, T, D]
    /// and head 0's greedy token after the prompt, [1] u32 on the device (the vocabulary projection
    /// runs at the last position only).
    fn prefill(&mut self, ids: &Tensor) -> Result<(Tensor, Tensor)> {
        let (x, z) = self.dec.feed_ids(ids)?;
        let t = z.dim(1)?;
        let last = z.narrow(1, t - 1, 1)?.contiguous()?;
        let logits = self.dec.model().logits(&last, &self.ctx)?.flatten_all()?;
        Ok((x, logits.to_dtype(DType::F32)?.argmax_keepdim(0)?))
    }

    /// Runs the extra heads over the trunk outputs `x` [1, n, D] of positions start.. (the accepted
    /// ones: their caches never hold a rejected position); returns each extra head's greedy token at
    /// the last of them — the drafts of the next round, [H−1] u32 on the device.
    fn draft(&mut self, x: &Tensor, start: usize) -> Result<Tensor> {
        let m = self.dec.model();
        let n = x.dim(1)?;
        let (rope, mask) = positions(m, start, n)?;
        let mut last = Vec::with_capacity(self.extra.len());
        for (head, cache) in m.extra_heads.iter().zip(self.extra.iter_mut()) {
            let z = block_cached(head, x, &rope, &mask, cache, &self.ctx)?;
            last.push(z.narrow(1, n - 1, 1)?);
        }
        // one vocabulary projection for all heads' last states: [H−1, 1, D] → [H−1, 1, V]
        let logits = m.logits(&Tensor::cat(&last, 0)?.contiguous()?, &self.ctx)?;
        Ok(logits.squeeze(1)?.to_dtype(DType::F32)?.argmax(1)?)
    }
}

/// How many of the candidates y₁..y_n a round accepts: y₁ always (head 0's own greedy token), then
/// y_{j+1} while it equals head 0's greedy token after y_j (`greedy[j − 1]`); counts each extra
/// head's checked and accepted drafts into `stats`.
fn accepted_prefix(cand: &[u32], greedy: &[u32], stats: &mut SpeculativeStats) -> usize {
    let mut m = 1;
    while m < cand.len() {
        stats.checked[m - 1] += 1;
        if cand[m] != greedy[m - 1] {
            break;
        }
        stats.accepted[m - 1] += 1;
        m += 1;
    }
    m
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
        out.push(decode_one(model, prompt, opts, &mut stats, &mut |new| {
            stop(i, new)
        })?);
    }
    Ok((out, stats))
}

/// One prompt's speculative decoding (see [`generate_speculative`]); one device-to-host read per round.
fn decode_one(
    model: &Transformer,
    prompt: &[u32],
    opts: &GenerateOptions,
    stats: &mut SpeculativeStats,
    stop: &mut dyn FnMut(&[u32]) -> bool,
) -> Result<Vec<u32>> {
    let mut dec = HeadsDecoder::new(model);
    let ids = Tensor::new(prompt, model.device())?.unsqueeze(0)?;
    let (x, mut cand) = dec.prefill(&ids)?;
    // the next token (head 0) and the drafts after it (heads 1..), at the last position
    if !model.extra_heads.is_empty() {
        cand = Tensor::cat(&[cand, dec.draft(&x, 0)?], 0)?;
    }
    let mut new: Vec<u32> = Vec::new();
    while new.len() < opts.max_new {
        let room = model.args.max_seq_len - dec.dec.len();
        if room == 0 {
            // no position left to verify in: y₁ is still head 0's greedy token, as plain decoding's last
            new.push(cand.narrow(0, 0, 1)?.to_vec1::<u32>()?[0]);
            stats.tokens += 1;
            break;
        }
        let n = cand.dim(0)?.min(opts.max_new - new.len()).min(room);
        let cand_n = cand.narrow(0, 0, n)?;
        let start = dec.dec.len();
        let (x, greedy) = dec.feed(&cand_n.unsqueeze(0)?)?;
        stats.rounds += 1;
        // the round's one read: the candidates fed and head 0's greedy token after each
        let both = Tensor::cat(&[&cand_n, &greedy], 0)?.to_vec1::<u32>()?;
        let (fed, verdict) = both.split_at(n);
        let m = accepted_prefix(fed, verdict, stats);
        for &t in &fed[..m] {
            new.push(t);
            stats.tokens += 1;
            if Some(t) == opts.eos || stop(&new) || new.len() == opts.max_new {
                return Ok(new);
            }
        }
        dec.dec.truncate(start + m)?;
        cand = greedy.narrow(0, m - 1, 1)?;
        if new.len() + 1 < opts.max_new && !model.extra_heads.is_empty() {
            cand = Tensor::cat(&[cand, dec.draft(&x.narrow(1, 0, m)?, start)?], 0)?;
        }
    }
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::generate::{generate, Sampling};
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
    fn a_model_without_extra_heads_decodes_one_token_a_round() -> Result<()> {
        let mut args = ModelArgs::preset("tiny").expect("tiny preset");
        args.n_future_tokens = 1;
        let m = Transformer::random(args, 3, DType::F32, &Device::Cpu)?;
        let prompts = vec![vec![3u32, 1, 4, 1, 5]];
        let plain = generate(&m, &prompts, &opts(12), &mut |_, _| false)?;
        let (spec, stats) = generate_speculative(&m, &prompts, &opts(12), &mut |_, _| false)?;
        assert_eq!(spec, plain);
        assert_eq!((stats.rounds, stats.tokens), (12, 12));
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
